"""The one build configuration: the data source, one section per model family, and the serving limits. Every
default is the default of the dataclass that owns it (serving limits in serving.contract.ServingLimits,
GRACE's model in models.grace.recommender.GraceTrainConfig, ...); a build sets any of them from one JSON
file and from the command line, and the result flows down to every stage.

    python -m exporters.build_repository --config build.json --set grace.epochs=3 --set serving.max_k=100

A JSON file holds the sections it changes, e.g. {"grace": {"epochs": 3}, "serving": {"beam_width": 32}}.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from data.simulator import SimConfig
from models.clip.train import TrainConfig as ClipTrainConfig
from models.grace.recommender import VARIANTS, GraceTrainConfig
from models.ranking.train import RankerTrainConfig
from serving.contract import ServingLimits


# Set by the data or the models, never by the config.
DATA_DECIDED = ("num_items", "num_categories", "num_campaigns", "tokens_per_event", "event_names", "category_names",
                "example_item_ids", "exclude_history")


def _limits(self, **decided) -> ServingLimits:
    return ServingLimits(**decided, **dataclasses.asdict(self))


# ServingLimits minus what the data decides, with ServingLimits' own defaults (not repeated here).
ServingConfig = dataclasses.make_dataclass(
    "ServingConfig", [(f.name, f.type, f.default) for f in dataclasses.fields(ServingLimits)
                      if f.name not in DATA_DECIDED], frozen=True, namespace={"limits": _limits})


# grace.variant "auto": the build trains each of these and keeps the best on validation (exporters.build_repository
# fit_grace). With the same budget, the semantic IDs alone (grace_nocot) rank better than attributes + semantic
# IDs (grace_jsa) on the simulator (seeds 0 / 1: NDCG@10 0.540 / 0.545 vs 0.474 / 0.510, HR@10 0.656 / 0.666 vs
# 0.667 / 0.682; half the decoder steps; training 70 s vs 155-166 s), while on MovieLens-100k the attributes do
# slightly better, within seed noise (3 seeds: HR@10 0.110 vs 0.103); docs/results/grace_path.md.
AUTO = "auto"
AUTO_VARIANTS = ("grace_jsa", "grace_nocot")


@dataclasses.dataclass(frozen=True)
class GraceBuildConfig:
    variant: str = AUTO  # a models.grace.recommender.VARIANTS name, or AUTO
    # GRACE supervises every position: an epoch is one pass over every user's windows of max_history events
    # (data.sequences.windows); examples_per_epoch caps the windows per epoch (None = all).
    examples_per_epoch: int | None = None
    # The cap keeps the default build within CI's minutes on 2 cores; early stopping may end training before.
    epochs: int = 6
    patience: int = 2  # validations (one per epoch) without a better HR@10 before stopping; 0 = no validation
    batch_size: int = 32
    # 3e-3 learns faster within the epoch cap than 1e-3 on MovieLens-100k and ties on the simulator
    # (docs/results/grace_build_lr.md).
    lr: float = 3e-3
    eval_users: int = 300  # held-out users the build evaluates GRACE, the baselines and the recent source on
    valid_users: int = 300  # validation users scored after each epoch
    baselines: bool = True  # SASRec, most-popular and recency trained and evaluated in the build, same split
    model: GraceTrainConfig = dataclasses.field(default_factory=GraceTrainConfig)  # its max_history and beam_width follow the serving section

    def __post_init__(self) -> None:
        if self.variant != AUTO and self.variant not in VARIANTS:
            raise ValueError(f"grace.variant must be {AUTO!r} or one of {sorted(VARIANTS)}, got {self.variant!r}")
        if self.model.item_head:  # the served retriever decodes paths only: it would not compute what was validated
            raise ValueError("grace.model.item_head is evaluation-only (python -m evaluation.evaluate --grace "
                             "item_head=true): the served retriever has no item head; docs/results/grace_heads.md")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    dataset: str = ""  # a dataset directory (docs/dataset.md); empty: the simulator's, from the section below
    simulator: SimConfig = dataclasses.field(default_factory=SimConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
    grace: GraceBuildConfig = dataclasses.field(default_factory=GraceBuildConfig)
    ranker: RankerTrainConfig = dataclasses.field(default_factory=RankerTrainConfig)
    clip: ClipTrainConfig = dataclasses.field(default_factory=ClipTrainConfig)

    def __post_init__(self) -> None:
        # One seed and one history length flow down to every section.
        object.__setattr__(self, "simulator", dataclasses.replace(self.simulator, seed=self.seed))
        object.__setattr__(self, "ranker", dataclasses.replace(self.ranker, seed=self.seed,
                                                               max_history=self.serving.max_history))
        object.__setattr__(self, "clip", dataclasses.replace(self.clip, seed=self.seed))
        model = dataclasses.replace(self.grace.model, max_history=self.serving.max_history,
                                    beam_width=self.serving.beam_width)
        object.__setattr__(self, "grace", dataclasses.replace(self.grace, model=model))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _replace(obj, changes: dict, where: str):
    """A copy of dataclass `obj` with `changes` applied, nested sections included; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    updates = {}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"{where}{key}: unknown setting; known: {sorted(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{key}: is a section; give an object of its settings")
            updates[key] = _replace(current, value, f"{where}{key}.")
        else:
            if isinstance(current, tuple):
                value = tuple(value)
            elif isinstance(current, (int, float, str)) and not isinstance(current, bool):
                value = type(current)(value)
            updates[key] = value
    return dataclasses.replace(obj, **updates)


def parse_assignment(text: str) -> dict:
    """'grace.epochs=3' -> {"grace": {"epochs": 3}} (the value parsed as JSON when it is JSON, else a string)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected section.setting=value")
    path, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for key in reversed(path.strip().split(".")):
        value = {key: value}
    return value


def load_config(path: Path | None = None, assignments: list[str] = (), base: BuildConfig | None = None
                ) -> BuildConfig:
    """The defaults, then the JSON file, then each --set in order."""
    config = base or BuildConfig()
    if path is not None:
        config = _replace(config, json.loads(Path(path).read_text()), "")
    for text in assignments:
        config = _replace(config, parse_assignment(text), "")
    return BuildConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def from_dict(settings: dict) -> BuildConfig:
    """The BuildConfig that `BuildConfig.to_dict()` recorded (e.g. in a build manifest)."""
    return load_config(base=_replace(BuildConfig(), settings, ""))
