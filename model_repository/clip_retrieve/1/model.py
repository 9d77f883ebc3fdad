"""clip_retrieve: CLIP-embedding nearest neighbours of the request's history in the FAISS item index,
restricted to the items the request may receive."""

import faiss
import numpy as np

from exporters.python_backend import StepModel
from models.ann_index import load_index
from models.clip_retrieval import clip_retrieve
from models.pipeline import eligible_mask


class TritonPythonModel(StepModel):
    INPUTS = ("hist_items", "hist_behaviors", "exclude_ids", "allowed_categories")

    def setup(self):
        faiss.omp_set_num_threads(1)  # Triton runs the models side by side on few cores
        self.index = load_index(self.version_dir / "clip_items.faiss")
        self.item_embeddings = np.load(self.version_dir / "clip_item_embeddings.npy")
        self.top_category = np.load(self.version_dir / "item_top_category.npy")

    def run(self, hist_items, hist_behaviors, exclude_ids, allowed_categories):
        eligible = eligible_mask(self.top_category, exclude_ids, allowed_categories)
        items, scores = clip_retrieve(self.index, self.item_embeddings, hist_items, hist_behaviors, eligible,
                                      self.limits.knn_candidates)
        return {"knn_items": items, "knn_scores": scores}
