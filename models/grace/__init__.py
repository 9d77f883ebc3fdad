"""GRACE training side: the encoder-decoder (model.py), journey-aware sparse attention (jsa.py), semantic
IDs and the recommender used by the build and the harness. Its serving side is serving/grace/."""
