"""The served steps: what each step of serving.graph computes, in numpy and ONNX Runtime. Each
`model_repository/<step>/1/model.py` is one import of its class here; the in-process reference runs the same
classes (with the torch models swapped in for the neural ones)."""

from __future__ import annotations

import collections
import dataclasses
import json

import faiss
import numpy as np

from serving import graph, metrics
from serving.ads.scorer import SOURCES as AD_SOURCES, CtrScorer
from serving.backend import StepModel
from serving.calibration import CALIBRATOR_FILE, IsotonicCalibrator
from serving.catalog import ItemIds, load_top_category
from serving.clip.ann_index import load_index
from serving.clip.embedder import OnnxClipEmbedder
from serving.clip.retrieval import ITEM_EMBEDDINGS_FILE, ITEM_INDEX_FILE, clip_retrieve, query_weights
from serving.contract import RequestError, behavior_code
from serving.grace.history import HistoryEncoder
from serving.grace.retriever import OnnxGraceRetriever
from serving.ranking import MERGE_PRIORITY_FILE, ORDERING_FILE, OnnxRanker
from serving.recent import REMOVAL_EVENT, recent_items
from serving.sasrec import OnnxSasrec
from serving.recommend import (HistoryFeatures, calibrated_top_k, eligible_mask, merge_candidates,
                               validate_and_featurize)
from serving.validation import integer_array, validate_history

MAX_TEXT_BYTES = 1024


class RequestStep(StepModel):
    """A step that takes recommend's request as the client sent it and validates it itself (the retrieval steps
    run side by side on it: no hop before them). A bad request raises RequestError naming the field."""

    ENCODES_HISTORY = False  # GRACE reads the history as tokens with journeys (serving.grace.history)

    def load(self):
        super().load()
        self.catalog = ItemIds.load(self.version_dir)
        self.history_encoder = HistoryEncoder.load(self.version_dir) if self.ENCODES_HISTORY else None

    def features(self, request: dict) -> HistoryFeatures:
        """One request's validated features (the encoder tokens only where the step encodes the history)."""
        return validate_and_featurize(self.history_encoder, self.limits, self.catalog, **request)

    def run(self, item_ids, behaviors, timestamps, k, exclude_item_ids=None, category_ids=None):
        return self.run_batch([dict(item_ids=item_ids, behaviors=behaviors, timestamps=timestamps, k=k,
                                    exclude_item_ids=exclude_item_ids, category_ids=category_ids)])[0]


class GraceRetrieve(RequestStep):
    STEP = graph.GRACE_RETRIEVE
    ENCODES_HISTORY = True

    def load(self):
        super().load()
        self.retriever = OnnxGraceRetriever(self.version_dir)
        self.retriever.decoder_step = CountedRuns(self.retriever.decoder_step,
                                                  self.metrics.counter(metrics.GRACE_BEAM_STEPS))

    def run_batch(self, batch):
        """Every queued request in one encoder call and one decoder call per beam-search step (a bad request
        raises before any model runs: the scaffold then answers the batch one request at a time)."""
        features = [self.features(request) for request in batch]
        return self.retriever.batch([(f.enc_tokens, f.enc_journey_ids, f.enc_journey_pos, excluded(f.exclude_ids))
                                     for f in features], self.limits.beam_width)


class CountedRuns:
    """An ONNX Runtime session whose `run` calls add one each to a counter; everything else is the session's."""

    def __init__(self, session, counter: metrics.Counter):
        self.session, self.counter = session, counter

    def run(self, *args, **kwargs):
        self.counter.add()
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def excluded(exclude_ids: np.ndarray) -> set[int]:
    """The items a request excludes (0 pads the list)."""
    return set(np.asarray(exclude_ids).tolist()) - {0}


class FilteredStep(StepModel):
    """A step that restricts items to those the request may receive (its filters, never item 0)."""

    def load(self):
        super().load()
        self.top_category = load_top_category(self.version_dir)

    def eligible(self, exclude_ids, allowed_categories) -> np.ndarray:
        return eligible_mask(self.top_category, exclude_ids, allowed_categories)


class SideRetrieve(FilteredStep, RequestStep):
    """Recency, CLIP nearest neighbours and SASRec: the sources beside GRACE, one hop for the three; it also hands
    rank the validated history and filters."""

    STEP = graph.SIDE_RETRIEVE

    def load(self):
        super().load()
        self.removal_code = behavior_code(self.limits.event_names, REMOVAL_EVENT)
        faiss.omp_set_num_threads(1)  # Triton runs the models side by side on few cores
        self.index = load_index(self.version_dir / ITEM_INDEX_FILE)
        self.item_embeddings = np.load(self.version_dir / ITEM_EMBEDDINGS_FILE)
        self.behavior_weights = query_weights(self.limits.event_names)
        self.sasrec = OnnxSasrec(self.version_dir)

    def sasrec_top(self, hist_items: np.ndarray, eligible: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """SASRec's top sasrec_candidates eligible items of each row (the reference swaps in the torch model)."""
        return self.sasrec.retrieve(hist_items, eligible, self.limits.sasrec_candidates)

    def run_batch(self, batch):
        """SASRec scores every queued request in one ONNX Runtime call; recency and FAISS per request."""
        features = [self.features(request) for request in batch]
        eligible = np.stack([self.eligible(f.exclude_ids, f.allowed_categories) for f in features])
        hist = np.stack([f.hist_items for f in features])
        results = []
        for f, mask, sasrec in zip(features, eligible, self.sasrec_top(hist, eligible)):
            recent = recent_items(f.hist_items, f.hist_behaviors, mask, self.limits.recent_candidates,
                                  self.removal_code)
            knn = clip_retrieve(self.index, self.item_embeddings, f.hist_items, f.hist_behaviors, mask,
                                self.limits.knn_candidates, self.behavior_weights)
            results.append((f.hist_items, f.hist_behaviors, f.exclude_ids, f.allowed_categories, *recent, *knn,
                            *sasrec))
        return results


def load_source_priority(version_dir) -> tuple[int, ...]:
    """Indices into graph.RETRIEVAL_SOURCES, highest merge priority first (MERGE_PRIORITY_FILE, written by the
    build's ordering stage); every source exactly once."""
    names = json.loads((version_dir / MERGE_PRIORITY_FILE).read_text())["priority"]
    if sorted(names) != sorted(graph.SOURCE_NAMES):
        raise ValueError(f"{MERGE_PRIORITY_FILE} must name each of {list(graph.SOURCE_NAMES)} once, got {names}")
    return tuple(graph.SOURCE_NAMES.index(name) for name in names)


@dataclasses.dataclass(frozen=True)
class Candidates:
    """One request's merged candidates (internal ids in merge order, padded with 0) with the graph index of the
    source each is credited to (-1 for padding) and the ranker's two heads over them."""
    items: np.ndarray
    sources: np.ndarray
    logits: np.ndarray
    relevance: np.ndarray


class Rank(FilteredStep):
    """Merge, ranker and calibration: the end of `recommend`, one hop."""

    STEP = graph.RANK

    def load(self):
        super().load()
        self.priority = load_source_priority(self.version_dir)
        self.ranker = OnnxRanker(self.version_dir)
        self.calibrator = IsotonicCalibrator.load(self.version_dir / CALIBRATOR_FILE)
        self.catalog = ItemIds.load(self.version_dir)
        self.merge_weight = float(json.loads((self.version_dir / ORDERING_FILE).read_text())["merge_weight"])
        self.items_by_source = self.metrics.counters(metrics.RECOMMEND_ITEMS, "source", graph.SOURCE_NAMES)

    def merge(self, inputs: dict) -> tuple[np.ndarray, np.ndarray]:
        """The sources' items in priority order, deduplicated and filtered; sources as graph indices."""
        ordered = [inputs[graph.RETRIEVAL_SOURCES[s].items.name] for s in self.priority]
        eligible = self.eligible(inputs[graph.EXCLUDE_IDS.name], inputs[graph.ALLOWED_CATEGORIES.name])
        cand, src = merge_candidates(ordered, eligible, self.limits.max_candidates)
        return cand, np.where(src >= 0, np.asarray(self.priority, np.int32)[np.maximum(src, 0)], -1).astype(np.int32)

    def score(self, hist_items: np.ndarray, hist_behaviors: np.ndarray, cand_items: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """The ranker over [B, ...] rows -> (CTR logits, relevance), each [B, max_candidates]."""
        return self.ranker(hist_items, hist_behaviors, cand_items)

    def candidates(self, batch: list[dict]) -> list[Candidates]:
        """Every request's merged candidates, scored by the ranker in one call (the build's ordering stage reads
        them to pick the merge weight)."""
        merged = [self.merge(inputs) for inputs in batch]
        logits, relevance = self.score(np.stack([b[graph.HIST_ITEMS.name] for b in batch]),
                                       np.stack([b[graph.HIST_BEHAVIORS.name] for b in batch]),
                                       np.stack([cand for cand, _ in merged]))
        return [Candidates(cand, src, lg, rel) for (cand, src), lg, rel in zip(merged, logits, relevance)]

    def run_batch(self, batch):
        results = []
        for inputs, c in zip(batch, self.candidates(batch)):
            items, pctr, sources = calibrated_top_k(c.logits, c.relevance, c.items, c.sources, self.calibrator,
                                                    int(inputs[graph.K.name][0]), graph.SOURCE_NAMES,
                                                    self.merge_weight)
            # the response speaks the dataset's ids; cand_items (diagnostics) the graph's internal ones
            results.append((self.catalog.to_external(items), pctr, sources, c.items))
        return results

    def run(self, **inputs):
        return self.run_batch([inputs])[0]

    def count_served(self, outputs):
        count_values(self.items_by_source, outputs[graph.RETRIEVAL_SOURCE.name])


class ScoreAds(StepModel):
    STEP = graph.SCORE_ADS

    def load(self):
        self.scorer = CtrScorer.load(self.version_dir)
        # The published limits are the enforced ones (one build configuration).
        self.scorer.max_campaigns, self.scorer.max_history = self.limits.max_campaigns, self.limits.ads_max_history
        if tuple(self.scorer.event_names) != tuple(self.limits.event_names):  # run() checks behaviours by these
            raise RuntimeError(f"score_ads: the CTR artifact weighs events {list(self.scorer.event_names)}, the "
                               f"build published {list(self.limits.event_names)}; rebuild the repository")
        self.source_names = np.array([s.encode() for s in AD_SOURCES], dtype=object)
        self.catalog = ItemIds.load(self.version_dir)
        self.predictions_by_source = self.metrics.counters(metrics.SCORE_ADS_PREDICTIONS, graph.MODEL_SOURCE.name,
                                                          AD_SOURCES)

    def count_served(self, outputs):
        count_values(self.predictions_by_source, outputs[graph.MODEL_SOURCE.name])

    def run(self, item_ids, behaviors, timestamps, campaign_ids):
        """The request speaks the dataset's item and campaign ids; the scorer its internal ones."""
        items, behs, ts = validate_history(item_ids, behaviors, timestamps, max_history=self.limits.ads_max_history,
                                           catalog=self.catalog, event_names=self.limits.event_names)
        cids = integer_array(graph.CAMPAIGN_IDS.name, campaign_ids)
        if len(cids) == 0:
            raise RequestError(graph.CAMPAIGN_IDS.name, "at least 1 campaign is required")
        if len(cids) > self.limits.max_campaigns:
            raise RequestError(graph.CAMPAIGN_IDS.name, f"{len(cids)} campaigns; the maximum is "
                                                        f"{self.limits.max_campaigns}")
        internal = self.scorer.internal_campaigns(cids)  # the artifact carries the dataset's campaign ids
        # Checked here at the edge (the dataset's ids, the published limits): the scorer's own checks of its
        # internal ids would repeat them.
        pctr = self.scorer.score_checked(items, behs, ts, internal)
        return pctr, self.source_names[self.scorer.source[internal]]


class ClipEmbed(StepModel):
    """A request carries rows (creatives), each with an image, a text, or both (then the normalised mean);
    all rows of all queued requests go through each tower in one ONNX Runtime call."""

    STEP = graph.CLIP_EMBED

    def load(self):
        self.embedder = OnnxClipEmbedder(self.version_dir)

    def read_request(self, request):
        inputs = super().read_request(request)
        if not inputs:
            raise RequestError("image/text", "at least one of image or text is required")
        rows = {name: len(value) for name, value in inputs.items()}
        if len(set(rows.values())) != 1:
            raise RequestError("image/text", f"image and text must have the same number of rows, got {rows}")
        if graph.TEXT.name in inputs:
            inputs[graph.TEXT.name] = decode_texts(inputs[graph.TEXT.name], self.embedder.tokenizer,
                                                   int(self.embedder.manifest["context_length"]))
        return inputs

    def run_batch(self, batch):
        image, text = graph.IMAGE.name, graph.TEXT.name
        images = [b[image] for b in batch if image in b]
        texts = [t for b in batch if text in b for t in b[text]]
        image_emb = self.embedder.embed_images(np.concatenate(images)) if images else None
        text_emb = self.embedder.embed_texts(texts) if texts else None
        results, i, t = [], 0, 0
        for b in batch:
            parts = []
            if image in b:
                n = len(b[image])
                parts.append(image_emb[i:i + n])
                i += n
            if text in b:
                n = len(b[text])
                parts.append(text_emb[t:t + n])
                t += n
            emb = parts[0] if len(parts) == 1 else parts[0] + parts[1]
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            results.append((emb.astype(np.float32),))
        return results

    def run(self, image=None, text=None):
        inputs = {t.name: v for t, v in ((graph.IMAGE, image), (graph.TEXT, text)) if v is not None}
        return self.run_batch([inputs])[0]


def count_values(counters: dict[str, metrics.Counter], values: np.ndarray) -> None:
    """Adds how often each (bytes) value occurs to the counter of that name."""
    # collections.Counter over the few distinct names: ~10x cheaper than np.unique on an object array
    for name, n in collections.Counter(np.asarray(values, dtype=object).ravel().tolist()).items():
        counters[name.decode() if isinstance(name, bytes) else str(name)].add(int(n))


def decode_texts(column: np.ndarray, tokenizer, context_length: int) -> list[str]:
    """UTF-8 texts within the byte limit and the text tower's context (its tokenizer would cut the rest off
    silently: two texts differing only past the context would get one embedding)."""
    texts = []
    for row, value in enumerate(column.reshape(len(column), -1)[:, 0]):
        raw = value if isinstance(value, bytes) else str(value).encode()
        if len(raw) > MAX_TEXT_BYTES:
            raise RequestError(graph.TEXT.name, f"row {row} has {len(raw)} bytes; the maximum is {MAX_TEXT_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(graph.TEXT.name, f"row {row} is not valid UTF-8 (byte {err.start})") from None
        tokens = len(tokenizer.encode(text))
        if tokens > context_length:
            raise RequestError(graph.TEXT.name, f"row {row} has {tokens} tokens (with start and end); the maximum is "
                                                f"{context_length}")
        texts.append(text)
    return texts


IMPLEMENTATIONS = {cls.STEP.name: cls for cls in
                   (GraceRetrieve, SideRetrieve, Rank, ScoreAds, ClipEmbed)}
