"""The ranker: the DIN-style CTR model and its training with isotonic calibration. Serving side:
serving/ranking.py and serving/calibration.py."""
