"""The ads family's serving side: CTR features and the campaign scorer. Its artifact files are named here,
beside CtrScorer.load (serving/ads/scorer.py) and the writer (models/ads/llm_hyper.py)."""

WEIGHTS_FILE, META_FILE = "ctr_weights.npz", "ctr_meta.json"
