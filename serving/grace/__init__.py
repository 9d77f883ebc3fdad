"""GRACE serving side (numpy + ONNX Runtime): tokenizer, journeys, history encoder, beam search, retriever."""
