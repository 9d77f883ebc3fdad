"""The serving graph, declared once: every served step with its input and output tensors (dtype, dims), the
artifacts it loads and its batching, the retrieval sources in merge order, and the ensembles as data.

Everything else reads it: serving.configs renders and validates each config.pbtxt from it, the python-backend
scaffold (serving.backend) reads each step's I/O from it, and the in-process reference runs the ensemble's
steps from it in the same order. A tensor name or a step name is written here and nowhere else.

Dims are ints, or names of `serving.contract.ServingLimits` fields resolved when a build renders its configs.
Every tensor of a step carries a leading batch dimension when served; the dims here exclude it.

A tensor also declares what a request may put in it: `values` (inclusive low..high of an integer tensor) and
`max_len` (of a variable-length one), as ints or limit expressions ("num_items", "num_categories-1",
"max_exclude+1"). Every served step checks its inputs against them before it runs (serving.backend), so an
internal step called directly answers INVALID_ARGUMENT naming the tensor and the limit, like the ensemble.
"""

from __future__ import annotations

import dataclasses

from serving.ads import META_FILE as ADS_META_FILE, WEIGHTS_FILE as ADS_WEIGHTS_FILE
from serving.calibration import CALIBRATOR_FILE
from serving.catalog import CATEGORY_FILE, ITEM_IDS_FILE
from serving.clip.embedder import IMAGE_FILE, MANIFEST_FILE as CLIP_MANIFEST_FILE, TEXT_FILE
from serving.clip.retrieval import ITEM_EMBEDDINGS_FILE, ITEM_INDEX_FILE
from serving.grace.history import HISTORY_FILES
from serving.grace.retriever import DECODER_STEP_FILE, DECODING_FILE, ENCODER_FILE
from serving.ranking import MERGE_PRIORITY_FILE, ORDERING_FILE, RANKER_FILE
from serving.sasrec import SASREC_FILE

DTYPES = ("INT32", "INT64", "FP32", "UINT8", "STRING")  # Triton's TYPE_* names used here


def resolve(expression: int | str, limits) -> int:
    """An int, or a ServingLimits field with an optional "+n" / "-n" ("num_categories-1")."""
    if isinstance(expression, int):
        return expression
    field, sign, offset = expression.partition("+") if "+" in expression else expression.partition("-")
    value = getattr(limits, field)
    return value + (int(offset) if sign == "+" else -int(offset) if sign == "-" else 0)


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int | str, ...] = (-1,)
    optional: bool = False
    values: tuple[int | str, int | str] | None = None  # inclusive range of an integer tensor's values
    max_len: int | str | None = None  # most elements of a variable-length (-1) dimension

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name}: dtype {self.dtype} is not one of {DTYPES}")

    def shape(self, limits) -> list[int]:
        """Dims with the limit names replaced by their values."""
        return [resolve(d, limits) for d in self.dims]

    def value_range(self, limits) -> tuple[int, int] | None:
        return None if self.values is None else (resolve(self.values[0], limits), resolve(self.values[1], limits))

    def length_limit(self, limits) -> int | None:
        return None if self.max_len is None else resolve(self.max_len, limits)


@dataclasses.dataclass(frozen=True)
class Batching:
    max_batch_size: int | str = 8  # an int, or a ServingLimits field
    # The recommend steps' delay. Re-measured without the queue policy (docs/results/queue_delay.md, 3 alternated
    # rounds): 0 instead of 200 us takes ~0.5 ms off the concurrency-1 p50 (6.36 -> 5.80 ms) and costs ~9% of
    # throughput at 4 clients (270 -> 247 req/s), level at 16: a trade, not a win, so 200 stays.
    queue_delay_us: int = 200
    # False: one user per request, the batch dimension is 1. True: the request's rows are its batch
    # (clip_embed embeds up to max_clip_rows creatives per request).
    rows_are_batch: bool = False
    # Stub processes serving the step side by side (each runs one batch at a time on one core).
    instances: int = 1

    def max_batch(self, limits) -> int:
        return getattr(limits, self.max_batch_size) if isinstance(self.max_batch_size, str) else self.max_batch_size


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    doc: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    artifacts: tuple[str, ...] = ()  # files its version folder must hold (written by its build stage)
    batching: Batching = Batching()
    published: tuple[tuple[str, str], ...] = ()  # (config parameter, ServingLimits field) read by clients


@dataclasses.dataclass(frozen=True)
class RetrievalSource:
    name: str  # what `retrieval_source` answers for the items it found
    step: Step
    items: Tensor  # its candidate item ids, best first


@dataclasses.dataclass(frozen=True)
class Ensemble:
    name: str
    doc: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    steps: tuple[Step, ...]  # in execution order (Triton runs independent steps in parallel)
    published: tuple[tuple[str, str], ...] = ()
    max_batch_size: int = 8


# --- tensors ---------------------------------------------------------------------------------------------
# recommend's request and response
ITEM_IDS = Tensor("item_ids", "INT64")
BEHAVIORS = Tensor("behaviors", "INT32")
TIMESTAMPS = Tensor("timestamps", "INT64")
K = Tensor("k", "INT32", (1,), values=(1, "max_k"))
EXCLUDE_ITEM_IDS = Tensor("exclude_item_ids", "INT64", optional=True)
CATEGORY_IDS = Tensor("category_ids", "INT32", optional=True)
TOP_ITEM_IDS = Tensor("top_item_ids", "INT64")
PCTR = Tensor("pctr", "FP32")
RETRIEVAL_SOURCE = Tensor("retrieval_source", "STRING")
# between the steps of recommend
HIST_ITEMS = Tensor("hist_items", "INT64", ("max_history",), values=(0, "num_items"))
HIST_BEHAVIORS = Tensor("hist_behaviors", "INT64", ("max_history",), values=(0, "num_behaviors"))
EXCLUDE_IDS = Tensor("exclude_ids", "INT64", values=(0, "num_items"), max_len="max_exclude_ids")
ALLOWED_CATEGORIES = Tensor("allowed_categories", "INT64", values=(0, "num_categories-1"), max_len="num_categories")
GRACE_ITEMS = Tensor("grace_items", "INT64", ("beam_width",), values=(1, "num_items"))
GRACE_SCORES = Tensor("grace_scores", "FP32", ("beam_width",))
RECENT_ITEMS = Tensor("recent_items", "INT64", values=(1, "num_items"), max_len="recent_candidates")
RECENT_SCORES = Tensor("recent_scores", "FP32")
KNN_ITEMS = Tensor("knn_items", "INT64", values=(1, "num_items"), max_len="knn_candidates")
KNN_SCORES = Tensor("knn_scores", "FP32")
SASREC_ITEMS = Tensor("sasrec_items", "INT64", values=(1, "num_items"), max_len="sasrec_candidates")
SASREC_SCORES = Tensor("sasrec_scores", "FP32")
CAND_ITEMS = Tensor("cand_items", "INT64", ("max_candidates",), values=(0, "num_items"))
# score_ads and clip_embed
CAMPAIGN_IDS = Tensor("campaign_ids", "INT64")
MODEL_SOURCE = Tensor("model_source", "STRING")
IMAGE = Tensor("image", "UINT8", (28, 28), optional=True)
TEXT = Tensor("text", "STRING", (1,), optional=True)
EMBEDDING = Tensor("embedding", "FP32")

# --- steps -----------------------------------------------------------------------------------------------
FILTERS = (EXCLUDE_IDS, ALLOWED_CATEGORIES)
# recommend's request goes to both retrieval steps as it came: each validates it (the checks are cheap next to a
# hop: a `features` step before them cost ~2 ms at concurrency 1 and ~0.8 ms of CPU per request) and side_retrieve
# passes the validated history and filters on to rank.
REQUEST = (ITEM_IDS, BEHAVIORS, TIMESTAMPS, K, EXCLUDE_ITEM_IDS, CATEGORY_IDS)
GRACE_RETRIEVE = Step(
    "grace_retrieve", "validates a recommend request and encodes its history (CoT tokens, journey ids and "
    "positions); the GRACE encoder once, then trie-constrained beam search over the cached ONNX decoder step; "
    "excluded items never complete a beam, so all beam_width candidates are eligible",
    inputs=REQUEST, outputs=(GRACE_ITEMS, GRACE_SCORES),
    artifacts=HISTORY_FILES + (ITEM_IDS_FILE, ENCODER_FILE, DECODER_STEP_FILE, DECODING_FILE),
    # Two instances: GRACE is half of a request's CPU, and with one instance a batch waited for the previous one
    # while the second core idled (perf_sweep: c16 113 -> 124 req/s, c8 98 -> 108; docs/results/perf_sweep.md).
    batching=Batching(instances=2))
SIDE_RETRIEVE = Step(
    "side_retrieve", "the retrieval sources beside GRACE, in one step: the request's most recently interacted "
    "distinct items (repeat intent, newest first), CLIP-embedding nearest neighbours of the history in the FAISS "
    "item index, and SASRec's top items after the history (one ONNX call for all queued requests); filters inside. "
    "It validates the request too and hands rank the padded history and the request's filters",
    inputs=REQUEST,
    outputs=(HIST_ITEMS, HIST_BEHAVIORS) + FILTERS + (RECENT_ITEMS, RECENT_SCORES, KNN_ITEMS, KNN_SCORES,
                                                     SASREC_ITEMS, SASREC_SCORES),
    artifacts=(CATEGORY_FILE, ITEM_IDS_FILE, ITEM_INDEX_FILE, ITEM_EMBEDDINGS_FILE, SASREC_FILE),
    # One step, not three: each python step costs a hop and ~0.4-0.6 ms of CPU per request however little it
    # computes (perf_sweep, CPU per request by process), and these three together are cheaper than GRACE, beside
    # which they run.
    batching=Batching())

# The sources in graph order (a candidate's source index counts in it). The merge takes them in the priority its
# build picked on validation users (MERGE_PRIORITY_FILE, exporters.ordering): an item found by several sources is
# credited to the first, and the merge order is the one the final order mixes with the ranker's.
RETRIEVAL_SOURCES = (
    RetrievalSource("grace", GRACE_RETRIEVE, GRACE_ITEMS),
    RetrievalSource("recent", SIDE_RETRIEVE, RECENT_ITEMS),
    RetrievalSource("embedding_knn", SIDE_RETRIEVE, KNN_ITEMS),
    RetrievalSource("sasrec", SIDE_RETRIEVE, SASREC_ITEMS),
)

RANK = Step(
    "rank", "merge, ranker and calibration in one step: the union of the retrieval sources in the build's priority "
    "order (deduplicated, filtered), the ONNX ranker's two heads over it (CTR logits, next-interaction relevance; "
    "all queued requests in one ONNX Runtime call), and the top-k by relevance mixed with the merge order (a "
    "weight the build picks on validation users), each with its pCTR (isotonic-calibrated CTR logit) and "
    "retrieval source; cand_items is the merge order itself, for diagnostics",
    inputs=(HIST_ITEMS, HIST_BEHAVIORS) + tuple(source.items for source in RETRIEVAL_SOURCES) + FILTERS + (K,),
    outputs=(TOP_ITEM_IDS, PCTR, RETRIEVAL_SOURCE, CAND_ITEMS),
    artifacts=(CATEGORY_FILE, MERGE_PRIORITY_FILE, RANKER_FILE, CALIBRATOR_FILE, ITEM_IDS_FILE, ORDERING_FILE))
SCORE_ADS = Step(
    "score_ads", "calibrated pCTR of campaigns for one user: warm LR or LLM-HYPER cold-start weights",
    inputs=(ITEM_IDS, BEHAVIORS, TIMESTAMPS, CAMPAIGN_IDS), outputs=(PCTR, MODEL_SOURCE),
    artifacts=(ADS_WEIGHTS_FILE, ADS_META_FILE, ITEM_IDS_FILE),
    # No batching delay: a request's own work is under a millisecond, and waiting 200 us for company cost ~0.5 ms
    # at concurrency 1 (p50 2.16 -> 1.69 ms, medians of side-by-side sweeps: docs/results/queue_delay.md at commit
    # 050411b, when the steps still had a queue policy).
    batching=Batching(queue_delay_us=0),
    published=(("num_items", "num_items"), ("max_history", "ads_max_history"), ("behaviors", "event_names"),
               ("example_item_ids", "example_item_ids"),
               ("num_campaigns", "num_campaigns"), ("max_campaigns", "max_campaigns")))
CLIP_EMBED = Step(
    "clip_embed", "CLIP embeddings of images and/or texts, one creative per row",
    inputs=(IMAGE, TEXT), outputs=(EMBEDDING,), artifacts=(CLIP_MANIFEST_FILE, IMAGE_FILE, TEXT_FILE),
    batching=Batching(max_batch_size="max_clip_rows", rows_are_batch=True))

RECOMMEND = Ensemble(
    "recommend", "ranked items with calibrated pCTR and the retrieval source of each",
    inputs=REQUEST, outputs=(TOP_ITEM_IDS, PCTR, RETRIEVAL_SOURCE),
    steps=(GRACE_RETRIEVE, SIDE_RETRIEVE, RANK),
    published=(("num_items", "num_items"), ("max_history", "max_history"), ("max_k", "max_k"),
               ("num_categories", "num_categories"), ("max_exclude", "max_exclude"), ("behaviors", "event_names"),
               ("categories", "category_names"), ("example_item_ids", "example_item_ids")))

ENSEMBLES = (RECOMMEND,)
SERVED_STEPS = RECOMMEND.steps + (SCORE_ADS, CLIP_EMBED)  # python-backend models, each with a 1/model.py
STEPS = {step.name: step for step in SERVED_STEPS}
SOURCE_NAMES = tuple(source.name for source in RETRIEVAL_SOURCES)  # cand_sources indexes this


def run_ensemble(ensemble: Ensemble, steps: dict, request: dict, every_tensor: bool = False) -> dict:
    """Runs the ensemble's steps (callables by step name: tensors in, named tensors out) in graph order over named
    tensors, as Triton's ensemble scheduler does; returns the ensemble's outputs, or every tensor it made (the
    inputs of each step, for tests). The in-process reference and the benchmarks' in-process side run it."""
    tensors = dict(request)
    for step in ensemble.steps:
        inputs = {t.name: tensors[t.name] for t in step.inputs if t.name in tensors}
        tensors.update(steps[step.name](**inputs))
    return tensors if every_tensor else {t.name: tensors[t.name] for t in ensemble.outputs}
