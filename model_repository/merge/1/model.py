"""merge: union of the retrieval sources, deduplicated and filtered, padded to the ranker's width."""

import numpy as np

from exporters.python_backend import StepModel
from models.pipeline import eligible_mask, merge_candidates


class TritonPythonModel(StepModel):
    INPUTS = ("grace_items", "knn_items", "exclude_ids", "allowed_categories")

    def setup(self):
        self.top_category = np.load(self.version_dir / "item_top_category.npy")

    def run(self, grace_items, knn_items, exclude_ids, allowed_categories):
        eligible = eligible_mask(self.top_category, exclude_ids, allowed_categories)
        cand, sources = merge_candidates(grace_items, knn_items, eligible, self.limits.max_candidates)
        return {"cand_items": cand, "cand_sources": sources}
