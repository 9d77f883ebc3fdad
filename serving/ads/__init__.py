"""The ads family's serving side: CTR features and the campaign scorer. Its artifact files are named here,
beside CtrScorer.load (serving/ads/scorer.py) and the writer (models/ads/llm_hyper.py)."""

WEIGHTS_FILE, META_FILE = "ctr_weights.npz", "ctr_meta.json"
# Key (in WEIGHTS_FILE and META_FILE) of the dataset's id of each internal campaign 0..C-1; not "campaign_ids",
# which names the request tensor (serving.graph.CAMPAIGN_IDS).
DATASET_CAMPAIGN_IDS_KEY = "dataset_campaign_ids"
FORMAT_VERSION = 2  # 2: built from a dataset (dataset_campaign_ids, event_names, behaviour tables)
