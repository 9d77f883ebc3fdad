"""CLIP serving side: text tokenizer and image pixels, the ONNX embedder, the FAISS index and retrieval."""
