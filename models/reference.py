"""In-process reference of the served models: the steps of serving.graph run in the graph's order by the very
same step classes (serving.steps), with the torch models in place of their ONNX exports and no Triton in
between. Integration tests compare the server against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.clip.model import ClipEmbedder
from models.grace.model import load_checkpoint as load_grace
from models.grace.recommender import grace_retrieve, prior_candidates, trie_allowed_tokens
from models.ranking.model import load_checkpoint as load_ranker
from models.sasrec import load_checkpoint as load_sasrec
from serving import graph
from serving.graph import run_ensemble  # noqa: F401 (the reference's callers import it from here too)
from serving.backend import StepModel
from serving.contract import BUILD_MANIFEST as MANIFEST, ServingLimits
from serving.grace.beam_search import PriorStep, prefix_log_mass
from serving.grace.retriever import load_decoding, load_prior, load_prior_candidates, trie_normalized
from serving.sasrec import top_eligible
from serving.steps import IMPLEMENTATIONS, GraceRetrieve, Rank, RequestStep, ScoreAds, SideRetrieve, excluded

CLIP_CHECKPOINT_DIR = "clip_model"  # the torch CLIP model dir inside clip_embed/1 (clip_embed serves its ONNX)


class TorchGraceRetrieve(GraceRetrieve):
    def load(self):
        RequestStep.load(self)  # the request's validation and history encoder, not the ONNX retriever
        self.trie, self.path_to_item, _ = load_decoding(self.version_dir)
        self.trie_normalized = trie_normalized(self.version_dir)
        prior = load_prior(self.version_dir)  # the popularity prior the build chose, if any
        self.prior = None if prior is None else PriorStep(None, self.trie, prefix_log_mass(self.path_to_item, prior[0]),
                                                          prior[1])
        self.model = load_grace(self.version_dir)
        top = load_prior_candidates(self.version_dir)  # the prior's top items that join the beam's, if any
        paths = self.history_encoder.tokenizer.item_paths
        self.prior_top = None if top is None else prior_candidates(top, prior[0], self.path_to_item, prior[1], paths)
        self.allowed = (trie_allowed_tokens(paths, self.model.cfg.vocab_size)
                        if self.prior_top is not None and self.trie_normalized else None)

    @torch.no_grad()
    def run_batch(self, batch):  # the reference: one request at a time, the one-request search
        return [self.retrieve(self.features(request)) for request in batch]

    def retrieve(self, f):
        return grace_retrieve(self.model, self.trie, self.path_to_item, f.enc_tokens, f.enc_journey_ids,
                              f.enc_journey_pos, self.limits.beam_width, excluded(f.exclude_ids), self.trie_normalized,
                              allowed=self.allowed, prior=self.prior, prior_top=self.prior_top)


class TorchRank(Rank):
    def load(self):
        super().load()
        self.model = load_ranker(self.version_dir)

    @torch.no_grad()
    def score(self, hist_items, hist_behaviors, cand_items):
        logits, relevance = self.model(*(torch.from_numpy(np.asarray(a, np.int64))
                                         for a in (hist_items, hist_behaviors, cand_items)))
        return logits.numpy(), relevance.numpy()


class TorchSideRetrieve(SideRetrieve):
    def load(self):
        super().load()
        self.model = load_sasrec(self.version_dir)  # the torch model instead of the ONNX export

    @torch.no_grad()
    def sasrec_top(self, hist_items, eligible):
        hist = torch.from_numpy(np.asarray(hist_items, np.int64)[:, -self.model.cfg.max_len:])
        scores = self.model(hist).numpy()
        return [top_eligible(row, mask, self.limits.sasrec_candidates) for row, mask in zip(scores, eligible)]


TORCH_STEPS = {cls.STEP.name: cls for cls in (TorchGraceRetrieve, TorchSideRetrieve, TorchRank)}


class ReferencePipeline:
    def __init__(self, repository: Path):
        repository = Path(repository)
        manifest = json.loads((repository / MANIFEST).read_text())
        self.limits = ServingLimits.from_dict(manifest["limits"])
        self.steps = {step.name: TORCH_STEPS.get(step.name, IMPLEMENTATIONS[step.name]).create(
            repository / step.name / "1", self.limits) for step in graph.RECOMMEND.steps}
        self.top_category = self.steps[graph.RANK.name].top_category
        # The torch CLIP checkpoint (clip_embed serves its ONNX export) and the campaign CTR scorer.
        self.clip = ClipEmbedder.load(repository / graph.CLIP_EMBED.name / "1" / CLIP_CHECKPOINT_DIR)
        ads_dir = repository / graph.SCORE_ADS.name / "1"
        # score_ads is not built when the dataset has no campaigns (then it has no config).
        self.ads = ScoreAds.create(ads_dir, self.limits) if (ads_dir.parent / "config.pbtxt").exists() else None

    def recommend(self, item_ids, behaviors, timestamps, k, exclude_item_ids=None, category_ids=None
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Raises serving.contract.RequestError on bad input, as the server answers INVALID_ARGUMENT."""
        values = (np.asarray(item_ids), np.asarray(behaviors), np.asarray(timestamps), np.asarray([k]).reshape(-1),
                  exclude_item_ids, category_ids)
        request = {t.name: np.asarray(v) for t, v in zip(graph.RECOMMEND.inputs, values) if v is not None}
        out = run_ensemble(graph.RECOMMEND, self.steps, request)
        items, pctr, sources = (out[t.name] for t in graph.RECOMMEND.outputs)
        return items, pctr, [s.decode() for s in sources]

    def score_ads(self, item_ids, behaviors, timestamps, campaign_ids) -> np.ndarray:
        """Calibrated pCTR per campaign; raises RequestError as the server answers INVALID_ARGUMENT."""
        if self.ads is None:
            raise RuntimeError("score_ads was not built for this dataset (no campaigns)")
        pctr, _ = self.ads.run(np.asarray(item_ids), np.asarray(behaviors), np.asarray(timestamps),
                               np.asarray(campaign_ids))
        return pctr

    def clip_embed(self, images: np.ndarray | None = None, texts: list[str] | None = None) -> np.ndarray:
        """The torch CLIP model's embeddings (image, text, or both -> their normalised mean)."""
        if images is not None and texts is not None:
            return self.clip.embed_creatives(images=images, texts=texts)
        return self.clip.embed_images(images) if images is not None else self.clip.embed_texts(texts)
