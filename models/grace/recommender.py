"""The GRACE family as recommenders over a SequenceDataset: GRACE (CoT tokens + JSA), and the ablations and
generative baselines of the evaluation, which differ only in tokenization and attention:

    grace_jsa    CoT path (attributes + semantic IDs)   journey-aware sparse attention   journey embeddings
    grace_dense  CoT path                               dense causal attention           journey embeddings
    grace_nocot  semantic IDs only                      journey-aware sparse attention   journey embeddings
    tiger        semantic IDs only                      dense bidirectional (TIGER-style) no journeys

Every variant trains the same encoder-decoder with the same budget and ranks the whole catalog with
trie-constrained beam search. The default served model is grace_jsa, built by the same code.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.sequences import leave_last_out, next_items, training_counts, windows
from models.budget import EarlyStopping, TrainingBudget
from serving.grace.beam_search import (CachedStep, PriorStep, TrieNormalizedStep, constrained_beam_search,
                                       prefix_log_mass, top_prior_items)
from models.grace.model import NEG_INF, GraceConfig, GraceModel
from serving.grace.history import HistoryEncoder, left_pad
from serving.grace.journeys import DEFAULT_MAX_GAP
from models.grace.collaborative import cooccurrence_embeddings
from models.grace.semantic_ids import DEFAULT_HEADROOM, fit_residual_kmeans
from models.text_embedding import embed_texts, texts_key
from serving.contract import default_limit
from serving.grace.tokenizer import BOS, ItemTokenizer

CACHE_DIR = Path.home() / ".cache" / "recserve"
WARMUP_STEPS = 100


@dataclasses.dataclass(frozen=True)
class GraceVariant:
    tokens: str  # tokenizer variant: "cot" or "sid"
    attention: str  # "jsa" or "dense"
    causal_encoder: bool = True
    use_journeys: bool = True


VARIANTS = {
    "grace_jsa": GraceVariant("cot", "jsa"),
    "grace_dense": GraceVariant("cot", "dense"),
    "grace_nocot": GraceVariant("sid", "jsa"),
    "tiger": GraceVariant("sid", "dense", causal_encoder=False, use_journeys=False),
}


@dataclasses.dataclass(frozen=True)
class GraceTrainConfig:
    max_history: int = default_limit("max_history")  # events
    beam_width: int = default_limit("beam_width")
    journey_max_gap: float = DEFAULT_MAX_GAP  # seconds of inactivity that end a journey
    # Semantic IDs (models.grace.semantic_ids): `semantic_levels` residual k-means levels; each codebook has
    # semantic_codes codes, or with semantic_headroom > 0 min(semantic_codes, smallest k with k ** levels >=
    # semantic_headroom * N) (29 for the simulator's 1500 items: coarser, more shared codes; off by default until
    # its effect on HR@10 is measured), and the last level's codes are made distinct within each cell of the
    # previous levels (semantic_unique_last), so that (almost) no two items share a semantic ID (0% on
    # MovieLens-100k, was 27%) and the disambiguation code stays a formality.
    semantic_levels: int = 3
    semantic_codes: int = 256
    semantic_headroom: float = 0.0  # e.g. DEFAULT_HEADROOM (16) to fit the codebooks to the catalog
    semantic_unique_last: bool = True
    # What the semantic IDs quantise: "text" (MiniLM embeddings of the item texts), "collaborative" (PPMI-SVD
    # co-occurrence embeddings of the training sequences, models.grace.collaborative), or "text+collaborative"
    # (both, concatenated; items without training events keep their text part).
    # Collaborative by default: on MovieLens-100k it learns faster and higher than text (validation HR@10 0.163
    # at epoch 9 vs 0.150 at epoch 11, grace_dense, docs/results/grace.md).
    semantic_source: str = "collaborative"
    d_model: int = 64
    num_heads: int = 4
    layers: int = 2
    # Supervise the next item after every event of a history (one encoder pass per window of max_history
    # events, data.sequences.windows) instead of one target per (history, target) example: ~max_history
    # targets per pass, as SASRec gets.
    every_position: bool = True
    dropout: float = 0.1
    # GraceConfig.event_memory: the encoder attends over events, not tokens. On MovieLens-100k at the build's
    # budget HR@10 0.121 / 0.122 (seeds 0 / 1) in 242 / 193 s against 0.110 / 0.120 in 375 / 341 s over tokens
    # (docs/results/grace_event_memory.md).
    event_memory: bool = True
    # GraceConfig.copy (a pointer to the history's items; needs event_memory), for datasets whose users repeat
    # items only: where they never do, the history is excluded from every recommendation anyway.
    copy: bool = True
    level_softmax: bool = True  # normalise each path position over its level's tokens (what the trie allows)
    # JSA's geometry in memory positions: block, compressed-token length and stride, and window (JSAConfig's
    # block / compress_block / compress_stride / window). 0 keeps JSAConfig's defaults (64, tuned on token
    # memory, where 64 positions are ~7 events); with event_memory one position is one event, and 64 would put
    # a whole history in one block (no selection, no compressed keys: a query sees only its own journey and
    # the mean of each earlier one).
    jsa_block: int = 0
    # The current-journey window in memory positions (JSAConfig.window); 0 follows jsa_block (or JSAConfig's
    # default). A small block with a long window keeps attention inside the journey exact while the selected
    # and compressed branches reach the details of earlier journeys (with one block, only their means).
    jsa_window: int = 0
    # Train with the loss the decoder is searched with: at each path position the softmax runs over the children
    # the item trie allows after the target's (teacher-forced) prefix, not over the whole level (the other
    # tokens' scores masked to -inf before the cross-entropy; with the copy path, the mixture's log-probabilities
    # are masked and renormalised the same way). The model's scores of disallowed tokens are then untrained, so
    # retrieval renormalises each beam's step over its allowed children too: the reference (grace_retrieve) and
    # the served beam search alike (the build writes serving.grace.retriever.DECODING_FILE). On by default: at
    # the build budget MovieLens-100k test HR@10 0.121 -> 0.141 / 0.122 -> 0.145 (seeds 0 / 1), the simulator
    # 0.656 -> 0.663, NDCG@10 0.540 -> 0.561 (docs/results/grace_trie.md).
    trie_loss: bool = True
    # Whether retrieval renormalises over the trie's children (TrieNormalizedStep); None follows trie_loss.
    # False with trie_loss decodes level-normalised scores, which such a model was never trained to give (0.078).
    trie_decode: bool | None = None
    # GraceConfig.tied_head: the output head shares the token embeddings.
    tied_head: bool = False
    # path_loss's label smoothing (over the tokens each position may take).
    label_smoothing: float = 0.0
    # GraceConfig.item_head: a dense item head trained beside the decoder (a full softmax over the catalog after
    # every event, weighted item_loss_weight against the path loss). item_retrieval: how retrieval uses it:
    # "beam" (the decoder's beam search alone), "dense" (the item head's top items), "hybrid" (the union of
    # both top lists, each candidate scored by the sum of its path log-probability and its item-head
    # log-probability: a product of the two experts).
    item_head: bool = False
    # GraceConfig.item_buckets: a hashed per-item embedding in the event memory, with 4x the catalog's items
    # in buckets (rounded up to a power of two; few items share one). Off: at convergence on MovieLens-100k it
    # lifts validation HR@10 and leaves test HR@10 level (grace_batch.md).
    item_embedding: bool = False
    item_loss_weight: float = 1.0
    item_retrieval: str = "hybrid"
    # A recent-popularity prior in retrieval (beam_search.PriorStep): each item's training events of the last
    # `popularity_prior_days` days before the newest one, plus one, as an item prior whose weight is chosen on
    # validation among popularity_prior_weights (0 = the model alone; on a tie the smaller weight). 0 days = off.
    # The weights reach far: a converged model's path log-probabilities differ by many nats, so a prior of
    # weight <= 2 did not move one validation hit on MovieLens-100k's time split, while 8 took a 4-epoch model
    # from 0.071 to 0.212 validation HR@10 (30-day popularity alone: 0.153).
    popularity_prior_days: float = 0.0
    popularity_prior_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    # With the prior: the prior's own top items (this many, the request's excluded ones left out) join the
    # beam's as candidates, and every candidate is scored exactly (the model's trie-normalised path
    # log-probability, teacher-forced, + weight x log prior): the beam keeps prefixes by their summed prior mass,
    # so under a heavy prior it misses the single most popular items the product would rank first. 0: the beam's.
    # Served alike (serving.grace.beam_search.score_paths over the build's list of them, grace_decoding.json).
    popularity_prior_candidates: int = 0


SEMANTIC_SOURCES = ("text", "collaborative", "text+collaborative")
ITEM_RETRIEVALS = ("beam", "dense", "hybrid")


def item_bucket_count(num_items: int) -> int:
    """GraceConfig.item_buckets for a catalog: the power of two >= 4x its items."""
    return 1 << max(4, (4 * num_items - 1).bit_length())


def item_embeddings(dataset, cfg: GraceTrainConfig, seed: int, train_sequences, cache_dir: Path | None) -> np.ndarray:
    """[N, D] vectors the semantic IDs quantise (cfg.semantic_source), rows L2-normalised per part."""
    if cfg.semantic_source not in SEMANTIC_SOURCES:
        raise ValueError(f"semantic_source must be one of {SEMANTIC_SOURCES}, got {cfg.semantic_source!r}")
    parts = []
    if "text" in cfg.semantic_source:
        parts.append(_text_embeddings(dataset, cache_dir))
    if "collaborative" in cfg.semantic_source:
        if train_sequences is None:
            raise ValueError("collaborative semantic IDs need the training sequences")
        collab = cooccurrence_embeddings(train_sequences, dataset.num_items, seed=seed)
        cold = ~collab.any(axis=1)
        if cfg.semantic_source == "collaborative" and cold.any():
            # Items without training co-occurrence would share one all-zero vector (one cell, colliding codes):
            # they get their text embedding, randomly projected to the collaborative width, instead.
            text = _text_embeddings(dataset, cache_dir)[cold]
            filled = text @ np.random.default_rng(seed).standard_normal((text.shape[1], collab.shape[1]))
            collab[cold] = filled / np.maximum(np.linalg.norm(filled, axis=1, keepdims=True), 1e-12)
        parts.append(collab)
    return np.concatenate(parts, axis=1)


def _text_embeddings(dataset, cache_dir: Path | None) -> np.ndarray:
    """MiniLM embeddings of the item texts [N, 384], rows L2-normalised (cached by text content)."""
    texts = list(dataset.item_texts[1:])
    cache = None if cache_dir is None else Path(cache_dir) / f"minilm_{dataset.name}_{texts_key(texts)[:16]}.npz"
    text = embed_texts(texts, cache_path=cache).astype(np.float32)
    return text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)


def build_history_encoder(dataset, variant: GraceVariant, cfg: GraceTrainConfig, seed: int,
                          cache_dir: Path | None = CACHE_DIR, train_sequences=None) -> tuple[HistoryEncoder, dict]:
    """Item texts -> MiniLM embeddings (cached) -> residual k-means semantic IDs -> tokenizer of the variant,
    plus the journey segmentation (intent = leaf category where there is one, else the coarsest attribute).
    info["semantic_ids"] (SemanticIds.stats()) records levels, codebook sizes, collision rate and
    max items per code for the build's metrics."""
    embeddings = item_embeddings(dataset, cfg, seed, train_sequences, cache_dir)
    sids = fit_residual_kmeans(embeddings, levels=cfg.semantic_levels, codes_per_level=cfg.semantic_codes,
                               seed=seed, embedding_key=f"{cfg.semantic_source}:{texts_key(list(dataset.item_texts[1:]))}",
                               headroom=cfg.semantic_headroom if cfg.semantic_headroom > 0 else None,
                               unique_last_level=cfg.semantic_unique_last)
    attributes = dict(dataset.item_attributes)
    tokenizer = ItemTokenizer.from_columns(list(attributes.items()), sids.codes,
                                           include_attributes=variant.tokens == "cot", include_semantic=True,
                                           semantic_sizes=sids.codebook_sizes, num_behaviors=dataset.num_behaviors)
    intent = "leaf_category" if "leaf_category" in attributes else next(iter(attributes))
    encoder = HistoryEncoder(tokenizer, np.asarray(attributes[intent], np.int64), max_gap=cfg.journey_max_gap)
    info = {"semantic_ids": sids.stats(), "journey_intent": intent, "vocab_size": tokenizer.vocab_size,
            "path_length": tokenizer.path_length, "tokenizer_levels": list(tokenizer.level_names)}
    return encoder, info


def encode_examples(encoder: HistoryEncoder, examples, idx) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [encoder.encode(examples.histories[i], examples.behaviors[i], examples.timestamps[i]) for i in idx]


def trie_allowed_tokens(item_paths: np.ndarray, vocab_size: int) -> torch.Tensor:
    """item_paths [N+1, P] (row 0 the padding item) -> allowed [N+1, P, V] bool: allowed[i, p, t] is True iff
    some real item's path starts with item i's first p tokens and has token t at position p, i.e. t is a child
    of item i's length-p prefix in the trie (ItemTokenizer.build_trie). Row 0 allows every token (the padding
    item is never a target). One vectorised pass per path position: prefixes -> node ids (np.unique), then
    (node, child token) pairs scattered into a [nodes, V] table."""
    paths = np.asarray(item_paths, np.int64)[1:]
    n, p_len = paths.shape
    allowed = np.ones((n + 1, p_len, vocab_size), bool)
    for p in range(p_len):
        if p == 0:
            node, num_nodes = np.zeros(n, np.int64), 1
        else:
            _, node = np.unique(paths[:, :p], axis=0, return_inverse=True)
            node = node.reshape(-1)
            num_nodes = int(node.max()) + 1
        children = np.zeros((num_nodes, vocab_size), bool)
        children[node, paths[:, p]] = True
        allowed[1:, p] = children[node]
    return torch.from_numpy(allowed)


def path_loss(scores: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor | None = None,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of target tokens [..., P] under scores [..., P, V] (logits, or log-probabilities with
    the copy path: log_softmax leaves those unchanged). With `allowed` [..., P, V] (bool, e.g.
    trie_allowed_tokens[target items]) the softmax runs over the allowed tokens only (the rest masked to -inf):
    for the copy path's log-probabilities that is the mixture renormalised over the allowed children.
    label_smoothing eps: the target distribution is 1 - eps on the target plus eps spread uniformly over the
    tokens the position may take (the allowed ones; without `allowed`, those with a score above the level
    mask), so no mass lands on a token the search can never write."""
    if allowed is None:
        allowed = scores > NEG_INF / 2
    log_probs = scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)
    nll = -log_probs.gather(-1, target[..., None])[..., 0]
    if label_smoothing <= 0.0:
        return nll.mean()
    uniform = -log_probs.masked_fill(~allowed, 0.0).sum(-1) / allowed.sum(-1).clamp(min=1)
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()


def train_model(model: GraceModel, encoder: HistoryEncoder, train, budget: TrainingBudget, seed: int,
                progress: bool = True, every_position: bool = True, stopper: EarlyStopping | None = None,
                trie_loss: bool = False, label_smoothing: float = 0.0, item_loss_weight: float = 1.0) -> dict:
    """Teacher-forced next-item path prediction, batch by batch in the budget's order. every_position: `train`
    is a set of windows (data.sequences.windows) and the decoder is supervised after every event
    (GraceModel.forward_positions); else one target per example. `stopper` validates and may stop early.
    trie_loss: each position's softmax over the trie's children of the target's prefix (GraceTrainConfig)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.01)
    steps = budget.num_steps(len(train))
    # Linear warm-up, then the budget's rate: early stopping ends training at a point no schedule over the
    # epoch cap could anticipate.
    warmup = max(1, min(WARMUP_STEPS, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    paths = torch.from_numpy(encoder.tokenizer.item_paths)
    allowed = trie_allowed_tokens(encoder.tokenizer.item_paths, model.cfg.vocab_size) if trie_loss else None
    tpe = encoder.tokenizer.tokens_per_event
    started = time.perf_counter()
    model.train()
    losses, targets_seen = [], 0
    for step, ex in enumerate(tqdm(budget.batches(len(train), seed), total=steps, desc="grace", mininterval=5,
                                   disable=not progress), start=1):
        feeds = {k: torch.from_numpy(v) for k, v in left_pad(encode_examples(encoder, train, ex)).items()}
        if every_position:
            nxt = torch.from_numpy(next_items(train.subset(ex), feeds["tokens"].shape[1] // tpe))
            logits, states = model.forward_positions(feeds["tokens"], feeds["valid"], feeds["journey_ids"],
                                                     feeds["journey_pos"], paths[nxt], with_states=True)
            keep = nxt > 0
            items = nxt[keep]
            logits, target = logits[keep], paths[items]
        else:
            items = torch.from_numpy(train.targets[ex])
            target = paths[items]
            logits = model(feeds["tokens"], feeds["valid"], feeds["journey_ids"], feeds["journey_pos"], target)
        loss = path_loss(logits, target, None if allowed is None else allowed[items], label_smoothing)
        if model.cfg.item_head:
            loss = loss + item_loss_weight * F.cross_entropy(model.item_scores(states[keep]), items)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        targets_seen += len(target)
        if stopper is not None and stopper.after_step(step, targets_seen):
            break
    model.eval()
    seconds = time.perf_counter() - started - (stopper.eval_seconds if stopper else 0.0)
    return {"train_steps": len(losses), "train_seconds": round(seconds, 1), "targets_seen": targets_seen,
            "targets_per_second": round(targets_seen / max(seconds, 1e-9), 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4), "losses": losses}


@torch.no_grad()
def grace_retrieve(model: GraceModel, trie, path_to_item, tokens: np.ndarray, journey_ids: np.ndarray,
                   journey_pos: np.ndarray, beam_width: int, exclude: set[int] | None = None,
                   trie_normalized: bool = False, item_retrieval: str = "beam",
                   allowed: torch.Tensor | None = None, prior: PriorStep | None = None,
                   prior_top: "PriorCandidates | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference retrieval with the torch model for one encoded history (what grace_retrieve serves).
    trie_normalized: each step's scores renormalised over the beam's allowed children (TrieNormalizedStep),
    for a model trained with trie_loss. item_retrieval (a model with an item head; GraceTrainConfig): "beam",
    "dense" or "hybrid"; the hybrid's path log-probabilities are renormalised over `allowed`
    (trie_allowed_tokens) when trie_normalized. prior: a PriorStep whose step is replaced by this model's (the
    beam search ranks by the model's score plus the prior's); prior_top: the prior's top items, which join the
    beam's as candidates, every candidate then scored exactly (GraceTrainConfig.popularity_prior_candidates;
    needs `allowed` when trie_normalized)."""
    if item_retrieval not in ITEM_RETRIEVALS:
        raise ValueError(f"item_retrieval must be one of {ITEM_RETRIEVALS}, got {item_retrieval!r}")
    if model.cfg.item_head and item_retrieval == "hybrid" and trie_normalized and allowed is None:
        # else the hybrid would score candidates level-normalised while the beam ranked them trie-normalised
        raise ValueError("a trie-normalised hybrid retrieval needs `allowed` (trie_allowed_tokens of the catalog)")
    feeds = left_pad([(tokens, journey_ids, journey_pos)])
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    memory = model.encode(t["tokens"], t["valid"], t["journey_ids"], t["journey_pos"])
    cross_kv = model.cross_kv(memory)
    memory_paths = model.memory_paths(t["tokens"]) if model.cfg.copy else None
    if model.cfg.item_head and item_retrieval != "beam":
        dense = model.item_scores(model.event_states(memory)[0, -1]).log_softmax(-1)
        if exclude:
            dense[torch.tensor(sorted(i for i in exclude if 0 < i < len(dense)), dtype=torch.long)] = float("-inf")
        top = torch.topk(dense, min(beam_width, len(dense) - 1 - len(exclude or ()))).indices
        if item_retrieval == "dense":
            return top.numpy(), dense[top].numpy().astype(np.float64)

    def run(last_tokens: np.ndarray, past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_probs, present = model.decode_step(torch.from_numpy(last_tokens), torch.from_numpy(past), cross_kv,
                                               t["valid"], memory_paths)
        return log_probs.numpy(), present.numpy()

    step = CachedStep(run, model.empty_cache(1).numpy())
    step = TrieNormalizedStep(step, trie) if trie_normalized else step
    if prior is not None:
        step = prior.over(step)
    items, scores = constrained_beam_search(step, trie, path_to_item, beam_width, exclude)
    hybrid = model.cfg.item_head and item_retrieval != "beam"
    if prior_top is not None and prior is not None and not hybrid:
        if trie_normalized and allowed is None:
            raise ValueError("trie-normalised prior candidates need `allowed` (trie_allowed_tokens of the catalog)")
        # The prior's top items join the beam's; each candidate's score as the search would give it, exactly.
        extra = np.array([i for i in prior_top.items.tolist() if not exclude or i not in exclude], np.int64)
        candidates = torch.from_numpy(np.union1d(items, extra))
        path_log_prob = _path_log_probs(model, prior_top.paths[candidates], candidates, cross_kv, t["valid"],
                                        memory_paths, allowed if trie_normalized else None)
        total = path_log_prob.double() + torch.from_numpy(prior_top.log_prior[candidates.numpy()])
        order = torch.argsort(total, descending=True, stable=True)[:beam_width]
        return candidates[order].numpy(), total[order].numpy()
    if not hybrid:
        return items, scores
    candidates = torch.from_numpy(np.union1d(items, top.numpy()))
    path_log_prob = _path_log_probs(model, model.item_paths[candidates], candidates, cross_kv, t["valid"],
                                    memory_paths, allowed if trie_normalized else None)
    total = path_log_prob + dense[candidates]
    order = torch.argsort(total, descending=True, stable=True)
    return candidates[order].numpy(), total[order].numpy().astype(np.float64)


@dataclasses.dataclass(frozen=True)
class PriorCandidates:
    """What the popularity prior adds to retrieval as candidates (GraceTrainConfig.popularity_prior_candidates)."""

    items: np.ndarray  # the prior's top items, best first
    log_prior: np.ndarray  # [N + 1] weight x log p_prior(item): what the prior adds to an item's path score
    paths: torch.Tensor  # [N + 1, P] every item's path (the tokenizer's item_paths)


def prior_candidates(items: np.ndarray, prior_weights: np.ndarray, path_to_item: dict, weight: float,
                     item_paths: np.ndarray) -> PriorCandidates:
    """PriorCandidates of a prior (item weights [N+1] at `weight`) whose top `items` join the beam's: each item's
    weight x log p_prior is the log mass of its path less the trie's whole mass (prefix_log_mass)."""
    log_mass = prefix_log_mass(path_to_item, prior_weights)
    log_prior = np.full(len(prior_weights), -np.inf)
    for path, item in path_to_item.items():
        log_prior[item] = weight * (log_mass[path] - log_mass[()])
    return PriorCandidates(np.asarray(items, np.int64), log_prior, torch.as_tensor(item_paths, dtype=torch.long))


def _path_log_probs(model: GraceModel, path: torch.Tensor, candidates: torch.Tensor, cross_kv, valid, memory_paths,
                    allowed: torch.Tensor | None) -> torch.Tensor:
    """Teacher-forced log-probability of each candidate item's path [U, P] -> [U] under one history's memory;
    with `allowed` (trie_allowed_tokens) each position renormalised over the children the trie allows there."""
    prefix = torch.cat([torch.full_like(path[:, :1], BOS), path[:, :-1]], dim=1)
    generated = model.decode(prefix, cross_kv, valid, memory_paths)  # [U, P, V], one memory for every row
    if allowed is not None:
        generated = generated.masked_fill(~allowed[candidates], float("-inf"))
    return generated.log_softmax(-1).gather(-1, path[..., None])[..., 0].sum(-1)


class GraceRecommender:
    """fit / recommend over a SequenceDataset, for the evaluation harness and the default build."""

    def __init__(self, variant: str, cfg: GraceTrainConfig = GraceTrainConfig(), jsa: dict | None = None,
                 cache_dir: Path | None = CACHE_DIR, progress: bool = True):
        if variant not in VARIANTS:
            raise ValueError(f"unknown GRACE variant {variant!r}; known: {sorted(VARIANTS)}")
        self.name, self.variant, self.cfg, self.jsa = variant, VARIANTS[variant], cfg, jsa
        self.cache_dir, self.progress = cache_dir, progress
        self.model: GraceModel | None = None
        self._allowed: torch.Tensor | None = None  # allowed_tokens' cache
        self.info: dict = {}
        self.prior: PriorStep | None = None  # the popularity prior at its chosen weight (None: off or weight 0)
        self.prior_item_weights: np.ndarray | None = None
        self.prior_top: PriorCandidates | None = None  # the prior's top items as extra candidates (or None)
        # Settings chosen on validation by an earlier fit, to reuse when refitting without validation
        # (evaluation.evaluate --refit): {"popularity_prior_weight": w}.
        self.preset: dict = {}

    def fit(self, dataset, train_examples=None, *, seed: int = 0, budget: TrainingBudget = TrainingBudget(),
            valid=None) -> dict:
        """Trains on `train_examples` (every target before each user's held-out ones); with `valid` and
        budget.patience, validation HR@10 picks the best state (early stopping)."""
        if train_examples is None:
            train_examples = leave_last_out(dataset, self.cfg.max_history).train
        # The model's history length is the one its examples were cut to (the harness's --max-history).
        cfg = self.cfg = dataclasses.replace(self.cfg, max_history=max(len(h) for h in train_examples.histories))
        spans = windows(train_examples)  # every training event once: what the collaborative codes may see
        sequences = [np.append(h, t) for h, t in zip(spans.histories, spans.targets)]
        self.encoder, self.info = build_history_encoder(dataset, self.variant, cfg, seed, self.cache_dir, sequences)
        tok = self.encoder.tokenizer
        v = self.variant
        torch.manual_seed(seed)
        self.model = GraceModel(GraceConfig(
            vocab_size=tok.vocab_size, max_tokens=cfg.max_history * tok.tokens_per_event,
            path_length=tok.path_length, tokens_per_event=tok.tokens_per_event, d_model=cfg.d_model,
            num_heads=cfg.num_heads, encoder_layers=cfg.layers, decoder_layers=cfg.layers, attention=v.attention,
            causal_encoder=v.causal_encoder, use_journeys=v.use_journeys, jsa=self._jsa_config(), dropout=cfg.dropout,
            level_offsets=tuple(tok.level_offsets.tolist()) if cfg.level_softmax else None,
            event_memory=cfg.event_memory, copy=cfg.copy and dataset.repeats, tied_head=cfg.tied_head,
            item_head=dataset.num_items if cfg.item_head else 0,
            item_buckets=item_bucket_count(dataset.num_items) if cfg.item_embedding else 0))
        if cfg.item_head:
            self.model.set_item_paths(tok.item_paths)
        self.trie, self.path_to_item = tok.build_trie(), tok.path_to_item()
        self._allowed = None  # a new catalog
        # A bidirectional encoder (TIGER) sees later events from earlier positions: one target per example.
        every = cfg.every_position and v.causal_encoder
        if cfg.item_head and not every:
            raise ValueError("the item head is trained after every event: it needs every_position and a causal encoder")
        if cfg.item_retrieval not in ITEM_RETRIEVALS:
            raise ValueError(f"item_retrieval must be one of {ITEM_RETRIEVALS}, got {cfg.item_retrieval!r}")
        train = spans if every else train_examples
        stopper = EarlyStopping(budget, valid, self.model, self.recommend, len(train),
                                exclude_history=not dataset.repeats, num_items=dataset.num_items)
        trained = train_model(self.model, self.encoder, train, budget, seed, self.progress, every, stopper,
                              trie_loss=cfg.trie_loss, label_smoothing=cfg.label_smoothing,
                              item_loss_weight=cfg.item_loss_weight)
        self.losses = trained.pop("losses")
        self.info.update(trained, supervision="every position" if every else "one target per example",
                         **stopper.finish())
        self.prior = self.prior_top = None
        if cfg.popularity_prior_days > 0:
            self._choose_prior(dataset, train_examples, valid)
        return self.info

    def _choose_prior(self, dataset, train_examples, valid) -> None:
        """The popularity prior's log masses from the training events, and its weight: the preset one, else the
        best validation HR@10 among cfg.popularity_prior_weights (all validation users), else 0."""
        counts = training_counts(dataset, train_examples, self.cfg.popularity_prior_days)
        self.prior_item_weights = counts + 1.0  # what the build serves (serving.grace.retriever.PRIOR_FILE)
        log_mass = prefix_log_mass(self.path_to_item, self.prior_item_weights)
        weight = self.preset.get("popularity_prior_weight")
        if weight is None and valid is not None and len(valid):
            scores = {}
            for w in self.cfg.popularity_prior_weights:
                self.prior = PriorStep(None, self.trie, log_mass, w) if w else None
                self.prior_top = self._prior_candidates(w) if w else None
                ranked = self.recommend(valid, 10, exclude_history=not dataset.repeats)
                scores[w] = float((ranked == valid.targets[:, None]).any(axis=1).mean())
            weight = max(scores, key=lambda w: (scores[w], -w))
            self.info["valid_hr@10_by_prior_weight"] = {str(w): round(v, 5) for w, v in scores.items()}
        weight = float(weight or 0.0)
        self.prior = PriorStep(None, self.trie, log_mass, weight) if weight else None
        self.prior_top = self._prior_candidates(weight) if weight else None
        self.info["popularity_prior_weight"] = weight

    def _prior_candidates(self, weight: float) -> PriorCandidates | None:
        """The prior's popularity_prior_candidates top items as candidates (None when 0)."""
        n = self.cfg.popularity_prior_candidates
        if n <= 0:
            return None
        return prior_candidates(top_prior_items(self.prior_item_weights, self.path_to_item, n),
                                self.prior_item_weights, self.path_to_item, weight, self.encoder.tokenizer.item_paths)

    def allowed_tokens(self) -> torch.Tensor | None:
        """trie_allowed_tokens of the catalog, built once, for the hybrid retrieval's path scores."""
        hybrid = self.model.cfg.item_head and self.cfg.item_retrieval == "hybrid"
        if not ((hybrid or self.prior_top is not None) and self.trie_decode):
            return None
        if self._allowed is None:
            self._allowed = trie_allowed_tokens(self.encoder.tokenizer.item_paths, self.model.cfg.vocab_size)
        return self._allowed

    @property
    def trie_decode(self) -> bool:
        return self.cfg.trie_loss if self.cfg.trie_decode is None else bool(self.cfg.trie_decode)

    def _jsa_config(self) -> dict | None:
        """The full JSA config, recorded in the checkpoint so that later changes of the defaults cannot alter
        what a trained model computes."""
        if self.variant.attention != "jsa":
            return None
        from models.grace.jsa import JSAConfig  # noqa: PLC0415

        geometry = {}
        if self.cfg.jsa_block:
            geometry = {name: self.cfg.jsa_block for name in ("block", "compress_block", "compress_stride", "window")}
        if self.cfg.jsa_window:
            geometry["window"] = self.cfg.jsa_window
        return dataclasses.asdict(JSAConfig(**{**geometry, **(self.jsa or {})}))

    def recommend_one(self, items, behaviors, timestamps, k: int, exclude_history: bool = False) -> np.ndarray:
        """Top-k items; with exclude_history the whole given history is excluded inside the beam search (a
        dataset whose users never repeat an item), then fewer than k may come back on a tiny catalog."""
        exclude = set(np.asarray(items).tolist()) if exclude_history else None
        items, behaviors, timestamps = (np.asarray(a)[-self.cfg.max_history:] for a in (items, behaviors, timestamps))
        ranked, _ = grace_retrieve(self.model, self.trie, self.path_to_item, *self.encoder.encode(items, behaviors, timestamps),
                                   beam_width=max(k, self.cfg.beam_width), exclude=exclude,
                                   trie_normalized=self.trie_decode, item_retrieval=self.cfg.item_retrieval,
                                   allowed=self.allowed_tokens(), prior=self.prior, prior_top=self.prior_top)
        return ranked[:k]

    def recommend(self, examples, k: int, exclude_history: bool = False) -> np.ndarray:
        """Top-k item ids [M, k] for every history of `examples` (data.sequences.Examples); 0-padded where the
        beam search found fewer (only with exclude_history on a catalog barely larger than k)."""
        out = np.zeros((len(examples), k), np.int64)
        for i in range(len(examples)):
            row = self.recommend_one(examples.histories[i], examples.behaviors[i], examples.timestamps[i], k,
                                     exclude_history)
            out[i, :len(row)] = row
        return out
