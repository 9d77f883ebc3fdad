"""Torch models and their training, one package per family (grace, clip, ranking, ads), and the in-process
reference of the served pipeline (reference.py). Imports serving/, kernels/ and data/, never the reverse."""
