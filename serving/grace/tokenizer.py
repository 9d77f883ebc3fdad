"""Hybrid chain-of-thought tokenization of items and interactions (GRACE-shaped).

Every item has a token path, coarse to fine. Three variants share one construction:

    "attr": attribute levels (e.g. top category, leaf category, brand, price bucket) + disambiguation code
    "sid" : semantic-ID codes (residual quantisation of the item's content embedding) + disambiguation
    "cot" : attribute levels, then semantic-ID codes, then disambiguation (GRACE's hybrid CoT path)

The disambiguation code is the item's rank among items whose other levels are identical, so every path is
unique. An interaction is its behaviour token followed by the item's path. All levels share one vocabulary
of contiguous ranges:

    0 PAD | 1 BOS | behaviours | level 0 | level 1 | ... | disambiguation

The path table is an artifact (npz) so that serving and training use the same mapping. numpy only: serving
imports this module and must not import torch. Vocabulary documentation: docs/grace_tokens.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

PAD, BOS = 0, 1
DISAMBIGUATION = "code"  # name of the last path level, in every variant
SEMANTIC_PREFIX = "sid_"  # semantic levels are named sid_0, sid_1, ...
VARIANTS = ("attr", "sid", "cot")
# token_level() values for tokens outside the item path.
SPECIAL_LEVEL, BEHAVIOR_LEVEL = -2, -1

# Layout of the default "attr" tokenizer (`ItemTokenizer.from_catalog`). Kept while tests/serving/test_tokenizer.py
# and tests/serving/test_beam_search.py still use them; new code must use the instance
# properties (tokenizer.path_length, tokenizer.tokens_per_event, tokenizer.level_names), which are right for
# every variant. To be removed once those users are migrated.
PATH_LEVELS = ("top_category", "leaf_category", "brand", "price_bucket", DISAMBIGUATION)
PATH_LENGTH = len(PATH_LEVELS)
TOKENS_PER_EVENT = 1 + PATH_LENGTH


def disambiguation_codes(keys: np.ndarray) -> np.ndarray:
    """keys [N, K] int -> int64 [N]: rank of each row among identical rows, in row order (first is 0).

    Appending it to the keys makes every row unique. K may be 0 (then the code is just the row index)."""
    keys = np.asarray(keys, np.int64)
    if keys.ndim != 2:
        raise ValueError(f"keys must be 2-D [N, K], got shape {keys.shape}")
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    if keys.shape[1] == 0:
        return np.arange(n, dtype=np.int64)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # rows grouped, original order inside a group
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    out = np.empty(n, np.int64)
    out[order] = np.arange(n) - run_start
    return out


def event_paths(tokens, tokens_per_event: int):
    """Histories of whole events [B, T] -> each event's item path [B, T / tokens_per_event, path_length]: an
    event is its behaviour token, then its path (ItemTokenizer.event_tokens). numpy arrays and torch tensors
    alike (the served retriever and the model's copy path read the same layout)."""
    return tokens.reshape(tokens.shape[0], -1, tokens_per_event)[:, :, 1:]


def _variant_name(include_attributes: bool, include_semantic: bool) -> str:
    if include_attributes and include_semantic:
        return "cot"
    if include_semantic:
        return "sid"
    if include_attributes:
        return "attr"
    raise ValueError("include_attributes and include_semantic cannot both be False: the path would carry "
                     "nothing but the disambiguation code")


@dataclasses.dataclass(frozen=True)
class ItemTokenizer:
    item_paths: np.ndarray  # int64 [N+1, path_length], global token ids; row 0 (padding item) is all PAD
    level_offsets: np.ndarray  # int64 [path_length + 1]: level l owns tokens [offsets[l], offsets[l+1])
    behavior_offset: int
    num_behaviors: int
    level_names: tuple[str, ...] = PATH_LEVELS  # coarse to fine; the last is always DISAMBIGUATION
    variant: str = "attr"

    def __post_init__(self):
        if self.item_paths.ndim != 2 or self.item_paths.shape[1] != len(self.level_names):
            raise ValueError(f"item_paths must be [N+1, {len(self.level_names)}] for levels {self.level_names}, "
                             f"got {self.item_paths.shape}")
        if len(self.level_offsets) != len(self.level_names) + 1:
            raise ValueError(f"level_offsets must have {len(self.level_names) + 1} entries, got "
                             f"{len(self.level_offsets)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    # --- layout ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.level_offsets[-1])

    @property
    def num_items(self) -> int:
        return len(self.item_paths) - 1

    @property
    def path_length(self) -> int:
        return len(self.level_names)

    @property
    def tokens_per_event(self) -> int:
        return 1 + self.path_length

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.level_names[:-1] if not n.startswith(SEMANTIC_PREFIX))

    @property
    def num_semantic_levels(self) -> int:
        return sum(n.startswith(SEMANTIC_PREFIX) for n in self.level_names)

    @property
    def level_sizes(self) -> np.ndarray:
        return np.diff(self.level_offsets)

    def token_level(self, token_ids) -> np.ndarray:
        """Level of each token (same shape, int64): 0..path_length-1 for path tokens, BEHAVIOR_LEVEL (-1)
        for behaviour tokens, SPECIAL_LEVEL (-2) for PAD and BOS."""
        t = np.asarray(token_ids, np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.vocab_size):
            raise ValueError(f"token_ids must be in [0, vocab_size={self.vocab_size}), got range "
                             f"[{t.min()}, {t.max()}]")
        level = np.searchsorted(self.level_offsets, t, side="right") - 1
        level = np.where(t >= self.behavior_offset, level, SPECIAL_LEVEL)
        return np.where((t >= self.behavior_offset) & (t < self.level_offsets[0]), BEHAVIOR_LEVEL, level)

    def describe_token(self, token: int) -> str:
        """Readable name, e.g. 'BOS', 'behavior=2', 'brand=17' (value local to its level)."""
        token = int(token)
        level = int(self.token_level(np.array([token]))[0])
        if level == SPECIAL_LEVEL:
            return "PAD" if token == PAD else "BOS"
        if level == BEHAVIOR_LEVEL:
            return f"behavior={token - self.behavior_offset}"
        return f"{self.level_names[level]}={token - int(self.level_offsets[level])}"

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_columns(cls, attributes: Sequence[tuple[str, np.ndarray]] = (), semantic_codes: np.ndarray | None = None,
                     *, include_attributes: bool = True, include_semantic: bool = True,
                     semantic_sizes: Sequence[int] | None = None, num_behaviors: int = 5) -> "ItemTokenizer":
        """Build paths from item-id-indexed columns (row 0 = padding item, ignored).

        attributes: ordered (name, int column [N+1]) pairs, coarse to fine, values >= 0.
        semantic_codes: int [N+1, S] residual-quantisation codes (models.grace.semantic_ids.SemanticIds.codes).
        semantic_sizes: codebook size per semantic level (its token range); default max code + 1.
        include_attributes / include_semantic pick the variant: both "cot", semantic only "sid",
        attributes only "attr". Attribute level ranges are tight (max value + 1)."""
        variant = _variant_name(include_attributes, include_semantic)
        if num_behaviors < 1:
            raise ValueError(f"num_behaviors must be >= 1, got {num_behaviors}")
        names: list[str] = []
        cols: list[np.ndarray] = []
        sizes: list[int] = []
        n: int | None = None

        def check_rows(rows: int, what: str) -> None:
            nonlocal n
            if n is None:
                n = rows
            elif rows != n:
                raise ValueError(f"{what} has {rows} rows, expected {n} (N+1 with the padding row)")

        if include_attributes:
            if not attributes:
                raise ValueError("include_attributes=True needs at least one (name, column) in attributes")
            for name, col in attributes:
                col = np.asarray(col)
                if col.ndim != 1 or not np.issubdtype(col.dtype, np.integer):
                    raise ValueError(f"attribute {name!r} must be a 1-D integer column, got {col.dtype} {col.shape}")
                if name == DISAMBIGUATION or name.startswith(SEMANTIC_PREFIX) or name in names:
                    raise ValueError(f"attribute name {name!r} is reserved or repeated")
                check_rows(len(col), f"attribute {name!r}")
                if len(col) > 1 and col[1:].min() < 0:
                    raise ValueError(f"attribute {name!r} has negative values")
                names.append(name)
                cols.append(col[1:].astype(np.int64))
                sizes.append(int(col[1:].max()) + 1 if len(col) > 1 else 1)
        if include_semantic:
            if semantic_codes is None:
                raise ValueError("include_semantic=True needs semantic_codes [N+1, levels]")
            sc = np.asarray(semantic_codes)
            if sc.ndim != 2 or sc.shape[1] < 1 or not np.issubdtype(sc.dtype, np.integer):
                raise ValueError(f"semantic_codes must be an integer array [N+1, levels>=1], got {sc.dtype} {sc.shape}")
            check_rows(len(sc), "semantic_codes")
            body = sc[1:].astype(np.int64)
            if body.size and body.min() < 0:
                raise ValueError("semantic_codes has negative values")
            if semantic_sizes is None:
                sem_sizes = [int(body[:, j].max()) + 1 if len(body) else 1 for j in range(sc.shape[1])]
            else:
                sem_sizes = [int(s) for s in semantic_sizes]
                if len(sem_sizes) != sc.shape[1]:
                    raise ValueError(f"semantic_sizes has {len(sem_sizes)} entries for {sc.shape[1]} semantic levels")
                for j, s in enumerate(sem_sizes):
                    if len(body) and body[:, j].max() >= s:
                        raise ValueError(f"semantic level {j} has code {body[:, j].max()} >= semantic_sizes[{j}]={s}")
            for j in range(sc.shape[1]):
                names.append(f"{SEMANTIC_PREFIX}{j}")
                cols.append(body[:, j])
                sizes.append(sem_sizes[j])
        assert n is not None
        local = np.stack(cols, axis=1) if cols else np.zeros((n - 1, 0), np.int64)
        code = disambiguation_codes(local)
        local = np.concatenate([local, code[:, None]], axis=1)
        sizes.append(int(code.max()) + 1 if len(code) else 1)
        names.append(DISAMBIGUATION)

        behavior_offset = BOS + 1
        first = behavior_offset + num_behaviors
        offsets = np.concatenate([[first], first + np.cumsum(sizes)]).astype(np.int64)
        paths = local + offsets[:-1]
        paths = np.concatenate([np.full((1, len(names)), PAD, np.int64), paths])
        return cls(item_paths=paths, level_offsets=offsets, behavior_offset=behavior_offset,
                   num_behaviors=num_behaviors, level_names=tuple(names), variant=variant)

    @classmethod
    def from_catalog(cls, top: np.ndarray, leaf: np.ndarray, brand: np.ndarray, price_bucket: np.ndarray,
                     num_behaviors: int = 5) -> "ItemTokenizer":
        """The default "attr" tokenizer from per-item attribute columns (index 0 = padding item, ignored)."""
        return cls.from_columns(catalog_attributes(top, leaf, brand, price_bucket), None,
                                include_attributes=True, include_semantic=False, num_behaviors=num_behaviors)

    @classmethod
    def for_variant(cls, variant: str, catalog, semantic_ids=None, num_behaviors: int = 5) -> "ItemTokenizer":
        """variant "attr" | "sid" | "cot" from a data.simulator.Catalog-like object (top_category,
        leaf_category, brand, price_bucket columns) and a models.grace.semantic_ids.SemanticIds (sid, cot)."""
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        attrs = catalog_attributes(catalog.top_category, catalog.leaf_category, catalog.brand, catalog.price_bucket)
        use_sem = variant in ("sid", "cot")
        if use_sem and semantic_ids is None:
            raise ValueError(f"variant {variant!r} needs semantic_ids")
        if use_sem and semantic_ids.num_items != len(catalog.top_category) - 1:
            raise ValueError(f"semantic_ids cover {semantic_ids.num_items} items, catalog has "
                             f"{len(catalog.top_category) - 1}")
        return cls.from_columns(attrs, semantic_ids.codes if use_sem else None,
                                include_attributes=variant in ("attr", "cot"), include_semantic=use_sem,
                                semantic_sizes=semantic_ids.codebook_sizes if use_sem else None,
                                num_behaviors=num_behaviors)

    # --- persistence ----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Writes exactly `path` (np.savez would append .npz to a name without it)."""
        with open(path, "wb") as f:
            np.savez(f, item_paths=self.item_paths, level_offsets=self.level_offsets,
                     behavior_offset=self.behavior_offset, num_behaviors=self.num_behaviors,
                     level_names=np.array(self.level_names, dtype=str), variant=np.array(self.variant))

    @classmethod
    def load(cls, path: Path) -> "ItemTokenizer":
        """Loads any saved tokenizer; files written before variants existed load as variant "attr"."""
        with np.load(path, allow_pickle=False) as z:
            paths = z["item_paths"]
            if "level_names" in z.files:
                names = tuple(str(s) for s in z["level_names"].tolist())
                variant = str(z["variant"])
            else:
                if paths.shape[1] != PATH_LENGTH:
                    raise ValueError(f"{path}: old-format tokenizer with {paths.shape[1]} levels; expected "
                                     f"{PATH_LENGTH} ({PATH_LEVELS})")
                names, variant = PATH_LEVELS, "attr"
            return cls(item_paths=paths, level_offsets=z["level_offsets"],
                       behavior_offset=int(z["behavior_offset"]), num_behaviors=int(z["num_behaviors"]),
                       level_names=names, variant=variant)

    # --- use ------------------------------------------------------------------------------------------
    def event_tokens(self, items: np.ndarray, behaviors: np.ndarray) -> np.ndarray:
        """[L] events -> [L * tokens_per_event] tokens: behaviour token then the item path, per event."""
        beh = (self.behavior_offset + np.asarray(behaviors, np.int64))[:, None]
        return np.concatenate([beh, self.item_paths[np.asarray(items, np.int64)]], axis=1).reshape(-1)

    def decode_events(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of event_tokens: [L * tokens_per_event] -> (items [L], behaviors [L]).
        Raises ValueError on a length that is not whole events or a path that is no item."""
        tokens = np.asarray(tokens, np.int64)
        if tokens.ndim != 1 or len(tokens) % self.tokens_per_event:
            raise ValueError(f"tokens must be 1-D whole events of {self.tokens_per_event}, got shape {tokens.shape}")
        rows = tokens.reshape(-1, self.tokens_per_event)
        beh = rows[:, 0] - self.behavior_offset
        if len(beh) and (beh.min() < 0 or beh.max() >= self.num_behaviors):
            raise ValueError("an event does not start with a behaviour token")
        p2i = self.path_to_item()
        try:
            items = np.array([p2i[tuple(p)] for p in rows[:, 1:].tolist()], np.int64)
        except KeyError as e:
            raise ValueError(f"token path {e.args[0]} is not an item path") from None
        return items, beh

    def path_to_item(self) -> dict[tuple[int, ...], int]:
        return {tuple(p): i for i, p in enumerate(self.item_paths[1:].tolist(), start=1)}

    def build_trie(self) -> dict[tuple[int, ...], np.ndarray]:
        """Prefix -> sorted allowed next tokens, for every proper prefix of every real item path."""
        children: dict[tuple[int, ...], set[int]] = {}
        for p in self.item_paths[1:].tolist():
            for depth in range(self.path_length):
                children.setdefault(tuple(p[:depth]), set()).add(p[depth])
        return {k: np.array(sorted(v), np.int64) for k, v in children.items()}


def catalog_attributes(top: np.ndarray, leaf: np.ndarray, brand: np.ndarray,
                       price_bucket: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The project's attribute path, coarse to fine: category levels, brand, price bucket."""
    return [("top_category", np.asarray(top)), ("leaf_category", np.asarray(leaf)),
            ("brand", np.asarray(brand)), ("price_bucket", np.asarray(price_bucket))]
