"""The serving room: everything that runs inside tritonserver, torch-free (numpy, ONNX Runtime, faiss).

graph.py declares the served steps and ensembles once; steps.py implements them; backend.py is the
python-backend scaffold; configs.py renders config.pbtxt; launcher.py starts the server. It imports nothing
else of the project: models/, evaluation/ and exporters/ import it (docs/architecture.md)."""
