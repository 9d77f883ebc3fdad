"""The request contract every served model shares: the published limits (every serving default lives here,
once) and the client error that is answered as gRPC INVALID_ARGUMENT."""

from __future__ import annotations

import dataclasses
import json

# The default event vocabulary: behaviour code = 1 + index (0 is padding). A dataset may declare its own
# (dataset.json); the build publishes the one it served.
DEFAULT_EVENT_NAMES = ("view", "add_to_cart", "remove_from_cart", "purchase")
BUILD_MANIFEST = "build_manifest.json"  # what a build writes at the repository's root (its figures, what it skipped)
MAX_TIMESTAMP = 4_102_444_800  # event timestamps are unix seconds in 0..MAX_TIMESTAMP (2100-01-01T00:00:00Z)


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    num_items: int
    num_categories: int
    max_history: int = 32  # events per recommend request (GRACE trains on histories of this length)
    max_k: int = 50
    max_exclude: int = 1000
    beam_width: int = 20  # GRACE beams = GRACE candidates
    knn_candidates: int = 64  # CLIP-embedding nearest neighbours
    recent_candidates: int = 16  # distinct recently interacted items
    sasrec_candidates: int = 20  # SASRec's top items
    max_candidates: int = 64  # ranker width after the merge
    num_campaigns: int = 0  # score_ads: campaign ids are 0..num_campaigns-1
    max_campaigns: int = 256  # score_ads: campaigns per request
    ads_max_history: int = 50  # score_ads: events per request (the CTR features' window)
    max_clip_rows: int = 64  # clip_embed: images/texts per request
    tokens_per_event: int = 9  # GRACE tokens per history event (behaviour + item path); the build sets it
    # Set by the build from the dataset, published for clients: behaviour code i+1 is event_names[i]; category
    # filter index i is category_names[i] (the dataset's top-level categories, sorted); a few valid item ids
    # (the most interacted) for synthetic traffic, since a dataset's ids need not be 1..num_items.
    event_names: tuple[str, ...] = DEFAULT_EVENT_NAMES
    category_names: tuple[str, ...] = ()
    example_item_ids: tuple[int, ...] = ()
    exclude_history: bool = False  # the dataset never repeats an item: never recommend the request's history

    def __post_init__(self) -> None:
        for name in ("event_names", "category_names", "example_item_ids"):  # JSON gives lists back
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def num_behaviors(self) -> int:
        """Behaviour codes 1..num_behaviors (0 is padding)."""
        return len(self.event_names)

    @property
    def max_exclude_ids(self) -> int:
        """The longest internal exclusion list: the request's, the padding item, and (exclude_history) its history."""
        return self.max_exclude + 1 + (self.max_history if self.exclude_history else 0)

    @property
    def max_history_tokens(self) -> int:
        """The longest GRACE encoder input a request can produce."""
        return self.max_history * self.tokens_per_event

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServingLimits":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, values: dict) -> "ServingLimits":
        """Limits as a build wrote them; a key this code does not know means another version built them."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"serving limits {unknown} are unknown to this code: the model repository was built by "
                             "another version of the code; rebuild it (python -m exporters.build_repository)")
        return cls(**values)


def behavior_code(event_names: tuple[str, ...], name: str) -> int | None:
    """The behaviour code of an event name in a vocabulary, or None when the vocabulary lacks it."""
    return 1 + event_names.index(name) if name in event_names else None


class RequestError(ValueError):
    """A client error; served as gRPC INVALID_ARGUMENT. The message names the field and the limit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def default_limit(name: str):
    """The default of one ServingLimits field: training configs that must agree with serving read it here."""
    return ServingLimits.__dataclass_fields__[name].default
