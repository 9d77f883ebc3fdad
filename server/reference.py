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
from models.ann_index import load_index
from models.clip import ClipEmbedder
from models.clip_retrieval import clip_retrieve
from models.ctr_serving import CtrScorer
from models.pipeline import (ServingLimits, calibrated_top_k, eligible_mask, merge_candidates,
                             validate_and_featurize)
from models.ranker import Ranker, RankerConfig
from models.grace_inputs import HistoryEncoder
from models.grace_recommender import grace_retrieve


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
        self.history_encoder = HistoryEncoder.load(repository / "features" / "1")
        tokenizer = self.history_encoder.tokenizer
        self.trie, self.path_to_item = tokenizer.build_trie(), tokenizer.path_to_item()
        self.grace = _load_grace(repository / "grace_retrieve" / "1" / "grace.pt")
        self.ranker = _load_ranker(repository / "ranker" / "1" / "ranker.pt")
        self.calibrator = IsotonicCalibrator.load(repository / "calibrate" / "1" / "calibrator.npz")
        self.top_category = np.load(repository / "merge" / "1" / "item_top_category.npy")
        self.item_index = load_index(repository / "clip_retrieve" / "1" / "clip_items.faiss")
        self.item_embeddings = np.load(repository / "clip_retrieve" / "1" / "clip_item_embeddings.npy")
        # The torch CLIP checkpoint (clip_embed serves its ONNX export) and the campaign CTR scorer.
        self.clip = ClipEmbedder.load(repository / "clip_embed" / "1" / "clip_model")
        self.ads = CtrScorer.load(repository / "score_ads" / "1")

    @torch.no_grad()
    def recommend(self, item_ids, behaviors, timestamps, k, exclude_item_ids=None, category_ids=None
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Raises models.pipeline.RequestError on bad input, as the server answers INVALID_ARGUMENT."""
        f = validate_and_featurize(self.history_encoder, self.limits, np.asarray(item_ids), np.asarray(behaviors),
                                   np.asarray(timestamps), np.asarray([k]),
                                   None if exclude_item_ids is None else np.asarray(exclude_item_ids),
                                   None if category_ids is None else np.asarray(category_ids))
        grace_items, _ = grace_retrieve(self.grace, self.trie, self.path_to_item, f.enc_tokens, f.enc_journey_ids,
                                        f.enc_journey_pos, self.limits.beam_width)
        eligible = eligible_mask(self.top_category, f.exclude_ids, f.allowed_categories)
        knn_items, _ = clip_retrieve(self.item_index, self.item_embeddings, f.hist_items, f.hist_behaviors, eligible,
                                     self.limits.knn_candidates)
        cand, sources = merge_candidates(grace_items, knn_items, eligible, self.limits.max_candidates)
        logits = self.ranker(torch.from_numpy(f.hist_items[None]), torch.from_numpy(f.hist_behaviors[None]),
                             torch.from_numpy(cand[None]))[0].numpy()
        items, pctr, names = calibrated_top_k(logits, cand, sources, self.calibrator, int(k))
        return items, pctr, [n.decode() for n in names]

    def score_ads(self, item_ids, behaviors, timestamps, campaign_ids) -> np.ndarray:
        """Calibrated pCTR per campaign; raises RequestError as the server answers INVALID_ARGUMENT."""
        return self.ads.score(np.asarray(item_ids), np.asarray(behaviors), np.asarray(timestamps),
                              np.asarray(campaign_ids))

    def clip_embed(self, images: np.ndarray | None = None, texts: list[str] | None = None) -> np.ndarray:
        """The torch CLIP model's embeddings (image, text, or both -> their normalised mean)."""
        if images is not None and texts is not None:
            return self.clip.embed_creatives(images=images, texts=texts)
        return self.clip.embed_images(images) if images is not None else self.clip.embed_texts(texts)
