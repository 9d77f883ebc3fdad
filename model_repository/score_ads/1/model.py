"""score_ads: calibrated pCTR of campaigns for one user. Warm campaigns use their trained logistic
regression; cold-start campaigns use LLM-HYPER-generated weights; each family has its own calibrator.
Serving is features, a dot product, and calibration (numpy)."""

import numpy as np

from exporters.python_backend import StepModel
from models.ctr_serving import SOURCES, CtrScorer


class TritonPythonModel(StepModel):
    INPUTS = ("item_ids", "behaviors", "timestamps", "campaign_ids")

    def setup(self):
        self.scorer = CtrScorer.load(self.version_dir)
        self.source_names = np.array([s.encode() for s in SOURCES], dtype=object)

    def run(self, item_ids, behaviors, timestamps, campaign_ids):
        pctr = self.scorer.score(item_ids, behaviors, timestamps, campaign_ids)
        source = self.source_names[self.scorer.source[np.asarray(campaign_ids, np.int64).reshape(-1)]]
        return {"pctr": pctr, "model_source": source}
