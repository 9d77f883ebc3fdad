"""Building a model repository: the build configuration (config.py), one stage per model family
(build_repository.py) and the ONNX exports with their parity checks."""
