"""knn_retrieve: exact inner-product search of the user's history vector over eligible item vectors."""

import numpy as np

from exporters.python_backend import StepModel
from models.pipeline import eligible_mask, knn_retrieve


class TritonPythonModel(StepModel):
    INPUTS = ("hist_items", "hist_behaviors", "exclude_ids", "allowed_categories")

    def setup(self):
        self.item_vectors = np.load(self.version_dir / "item_vectors.npy")
        self.top_category = np.load(self.version_dir / "item_top_category.npy")

    def run(self, hist_items, hist_behaviors, exclude_ids, allowed_categories):
        eligible = eligible_mask(self.top_category, exclude_ids, allowed_categories)
        items, scores = knn_retrieve(self.item_vectors, hist_items, hist_behaviors, eligible,
                                     self.limits.knn_candidates)
        return {"knn_items": items, "knn_scores": scores}
