"""In-process reference of the served `recommend` pipeline: the same steps, with the torch models instead
of the exported ONNX graphs and no Triton in between. Integration tests compare the server against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.calibration import IsotonicCalibrator
from models.grace import GraceConfig, GraceModel
from models.pipeline import (ServingLimits, calibrated_top_k, eligible_mask, knn_retrieve, merge_candidates,
                             validate_and_featurize)
from models.ranker import Ranker, RankerConfig
from models.tokenizer import ItemTokenizer
from models.train import grace_retrieve


def _load_grace(path: Path) -> GraceModel:
    ckpt = torch.load(path, map_location="cpu")
    model = GraceModel(GraceConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state"])
    return model.eval()


def _load_ranker(path: Path) -> Ranker:
    ckpt = torch.load(path, map_location="cpu")
    cfg = RankerConfig(**ckpt["config"])
    placeholder = np.zeros(cfg.num_items + 1, np.int64)  # the real lookup tables come with the state dict
    model = Ranker(cfg, placeholder, placeholder, placeholder)
    model.load_state_dict(ckpt["state"])
    return model.eval()


class ReferencePipeline:
    def __init__(self, repository: Path):
        repository = Path(repository)
        manifest = json.loads((repository / "build_manifest.json").read_text())
        self.limits = ServingLimits(**manifest["limits"])
        self.tokenizer = ItemTokenizer.load(repository / "features" / "1" / "tokenizer.npz")
        self.trie, self.path_to_item = self.tokenizer.build_trie(), self.tokenizer.path_to_item()
        self.grace = _load_grace(repository / "grace_retrieve" / "1" / "grace.pt")
        self.ranker = _load_ranker(repository / "ranker" / "1" / "ranker.pt")
        self.calibrator = IsotonicCalibrator.load(repository / "calibrate" / "1" / "calibrator.npz")
        self.top_category = np.load(repository / "merge" / "1" / "item_top_category.npy")
        with torch.no_grad():
            self.item_vectors = self.ranker.item_vectors(torch.arange(self.limits.num_items + 1)).numpy()

    @torch.no_grad()
    def recommend(self, item_ids, behaviors, timestamps, k, exclude_item_ids=None, category_ids=None
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Raises models.pipeline.RequestError on bad input, as the server answers INVALID_ARGUMENT."""
        f = validate_and_featurize(self.tokenizer, self.limits, np.asarray(item_ids), np.asarray(behaviors),
                                   np.asarray(timestamps), np.asarray([k]),
                                   None if exclude_item_ids is None else np.asarray(exclude_item_ids),
                                   None if category_ids is None else np.asarray(category_ids))
        grace_items, _ = grace_retrieve(self.grace, self.tokenizer, self.trie, self.path_to_item, f.enc_tokens,
                                        self.limits.beam_width)
        eligible = eligible_mask(self.top_category, f.exclude_ids, f.allowed_categories)
        knn_items, _ = knn_retrieve(self.item_vectors, f.hist_items, f.hist_behaviors, eligible,
                                    self.limits.knn_candidates)
        cand, sources = merge_candidates(grace_items, knn_items, eligible, self.limits.max_candidates)
        logits = self.ranker(torch.from_numpy(f.hist_items[None]), torch.from_numpy(f.hist_behaviors[None]),
                             torch.from_numpy(cand[None]))[0].numpy()
        items, pctr, names = calibrated_top_k(logits, cand, sources, self.calibrator, int(k))
        return items, pctr, [n.decode() for n in names]
