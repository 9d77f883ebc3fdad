"""Unit tests of the item tokenizer: paths, vocabulary layout, event tokens, trie, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from data.simulator import SimConfig, simulate
from serving.grace.tokenizer import BOS, PAD, PATH_LENGTH, PATH_LEVELS, TOKENS_PER_EVENT, ItemTokenizer


@pytest.fixture(scope="module")
def catalog():
    return simulate(SimConfig(num_items=200, num_users=120)).catalog


@pytest.fixture(scope="module")
def tok(catalog) -> ItemTokenizer:
    return ItemTokenizer.from_catalog(catalog.top_category, catalog.leaf_category, catalog.brand,
                                      catalog.price_bucket)


def test_shapes_and_padding_row(tok, catalog):
    assert tok.num_items == catalog.num_items
    assert tok.item_paths.shape == (catalog.num_items + 1, PATH_LENGTH)
    assert np.all(tok.item_paths[0] == PAD)
    assert len(tok.level_offsets) == PATH_LENGTH + 1
    assert TOKENS_PER_EVENT == 1 + PATH_LENGTH == 1 + len(PATH_LEVELS)
    assert tok.vocab_size == tok.level_offsets[-1]


def test_round_trip_over_whole_catalog_and_paths_unique(tok):
    p2i = tok.path_to_item()
    assert len(p2i) == tok.num_items  # a dict: no two items share a path
    assert len(np.unique(tok.item_paths[1:], axis=0)) == tok.num_items
    for i in range(1, tok.num_items + 1):
        assert p2i[tuple(tok.item_paths[i].tolist())] == i
    assert set(p2i.values()) == set(range(1, tok.num_items + 1))


def test_paths_encode_the_item_attributes(tok, catalog):
    off = tok.level_offsets
    cols = [catalog.top_category, catalog.leaf_category, catalog.brand, catalog.price_bucket]
    for level, col in enumerate(cols):
        np.testing.assert_array_equal(tok.item_paths[1:, level] - off[level], col[1:], err_msg=PATH_LEVELS[level])


def test_each_level_owns_a_contiguous_range(tok):
    off = tok.level_offsets
    assert off[0] == tok.behavior_offset + tok.num_behaviors
    assert tok.behavior_offset > BOS > PAD
    assert np.all(np.diff(off) > 0)
    for level in range(PATH_LENGTH):
        col = tok.item_paths[1:, level]
        assert col.min() >= off[level] and col.max() < off[level + 1], PATH_LEVELS[level]
        # The range is tight: its last token is used by some item.
        assert col.max() == off[level + 1] - 1


def test_code_level_disambiguates_duplicates():
    # Items 1, 2, 4 share all attributes; item 3 differs in brand.
    top = np.array([0, 1, 1, 1, 1])
    leaf = np.array([0, 5, 5, 5, 5])
    brand = np.array([0, 2, 2, 3, 2])
    price = np.array([0, 1, 1, 1, 1])
    tok = ItemTokenizer.from_catalog(top, leaf, brand, price)
    codes = tok.item_paths[1:, -1] - tok.level_offsets[-2]
    np.testing.assert_array_equal(codes, [0, 1, 0, 2])
    assert len(tok.path_to_item()) == 4


def test_event_tokens_layout(tok):
    rng = np.random.default_rng(0)
    items = rng.integers(1, tok.num_items + 1, size=7)
    behs = rng.integers(1, 5, size=7)
    out = tok.event_tokens(items, behs)
    assert out.dtype == np.int64
    assert out.shape == (7 * TOKENS_PER_EVENT,)
    rows = out.reshape(7, TOKENS_PER_EVENT)
    np.testing.assert_array_equal(rows[:, 0], tok.behavior_offset + behs)
    assert np.all(rows[:, 0] < tok.level_offsets[0])
    np.testing.assert_array_equal(rows[:, 1:], tok.item_paths[items])
    # Order of events is kept, oldest first.
    np.testing.assert_array_equal(tok.event_tokens(items[:1], behs[:1]), rows[0])
    assert tok.event_tokens(np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)


def test_trie_reaches_every_item_and_only_items(tok):
    trie = tok.build_trie()
    p2i = tok.path_to_item()
    # Every real path is reachable step by step from the empty prefix.
    for path in tok.item_paths[1:].tolist():
        for depth in range(PATH_LENGTH):
            allowed = trie[tuple(path[:depth])]
            assert path[depth] in set(allowed.tolist())
            assert np.all(np.diff(allowed) > 0)  # sorted, unique
    # Walk the whole trie: every complete path is a real item, and every item is found exactly once.
    leaves = []
    frontier = [()]
    while frontier:
        prefix = frontier.pop()
        for tok_id in trie[prefix].tolist():
            nxt = prefix + (tok_id,)
            if len(nxt) == PATH_LENGTH:
                assert nxt not in trie
                leaves.append(nxt)
            else:
                assert nxt in trie, nxt
                frontier.append(nxt)
    assert len(leaves) == tok.num_items
    assert sorted(p2i[leaf] for leaf in leaves) == list(range(1, tok.num_items + 1))
    # Every trie key is a proper prefix of some item (no dead branches).
    assert all(len(k) < PATH_LENGTH for k in trie)


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.npz"
    tok.save(path)
    loaded = ItemTokenizer.load(path)
    np.testing.assert_array_equal(loaded.item_paths, tok.item_paths)
    np.testing.assert_array_equal(loaded.level_offsets, tok.level_offsets)
    assert loaded.behavior_offset == tok.behavior_offset and isinstance(loaded.behavior_offset, int)
    assert loaded.num_behaviors == tok.num_behaviors and isinstance(loaded.num_behaviors, int)
    assert loaded.vocab_size == tok.vocab_size
    items, behs = np.array([3, 1, 200]), np.array([1, 4, 2])
    np.testing.assert_array_equal(loaded.event_tokens(items, behs), tok.event_tokens(items, behs))


# --- variants: "attr", "sid", "cot" over the whole default simulator catalog ---------------------------

from models.grace.semantic_ids import catalog_semantic_ids, fit_residual_kmeans  # noqa: E402
from serving.grace.tokenizer import (BEHAVIOR_LEVEL, DISAMBIGUATION, SPECIAL_LEVEL, VARIANTS,  # noqa: E402
                                     disambiguation_codes)

ATTRS = ("top_category", "leaf_category", "brand", "price_bucket")


@pytest.fixture(scope="module")
def full_catalog():
    # The catalog the repository is built from (1500 items); it is drawn before users, so a world with few
    # users has the very same catalog and is much cheaper to simulate.
    return simulate(SimConfig(num_users=10)).catalog


@pytest.fixture(scope="module")
def sem(full_catalog, tmp_path_factory):
    # Real MiniLM title embeddings -> residual k-means (3 x 256), as the build will do it.
    return catalog_semantic_ids(full_catalog.titles, cache_path=tmp_path_factory.mktemp("emb") / "titles.npz",
                                num_threads=1)


@pytest.fixture(scope="module")
def variants(full_catalog, sem) -> dict[str, ItemTokenizer]:
    return {v: ItemTokenizer.for_variant(v, full_catalog, sem) for v in VARIANTS}


def _walk_trie(tok: ItemTokenizer) -> list[tuple[int, ...]]:
    trie = tok.build_trie()
    leaves, frontier = [], [()]
    while frontier:
        prefix = frontier.pop()
        allowed = trie[prefix]
        assert np.all(np.diff(allowed) > 0)
        for t in allowed.tolist():
            nxt = prefix + (t,)
            if len(nxt) == tok.path_length:
                assert nxt not in trie
                leaves.append(nxt)
            else:
                assert nxt in trie, nxt
                frontier.append(nxt)
    assert all(len(k) < tok.path_length for k in trie)
    return leaves


def test_variant_layouts(variants, sem):
    sids = tuple(f"sid_{j}" for j in range(sem.levels))
    expected = {"attr": ATTRS + (DISAMBIGUATION,), "sid": sids + (DISAMBIGUATION,),
                "cot": ATTRS + sids + (DISAMBIGUATION,)}
    for v, tok in variants.items():
        assert tok.variant == v and tok.level_names == expected[v]
        assert tok.path_length == len(expected[v]) and tok.tokens_per_event == 1 + tok.path_length
        assert tok.item_paths.shape == (tok.num_items + 1, tok.path_length)
        assert np.all(tok.item_paths[0] == PAD)
        off = tok.level_offsets
        assert off[0] == tok.behavior_offset + tok.num_behaviors and tok.vocab_size == off[-1]
        for level in range(tok.path_length):
            col = tok.item_paths[1:, level]
            assert col.min() >= off[level] and col.max() < off[level + 1], (v, level)
    # The attr variant is exactly the legacy tokenizer; the module constants describe it.
    assert variants["attr"].path_length == PATH_LENGTH and variants["attr"].level_names == PATH_LEVELS


def test_variant_paths_encode_attributes_and_semantic_codes(variants, sem, full_catalog):
    for v, tok in variants.items():
        off, names = tok.level_offsets, tok.level_names
        for level, name in enumerate(names[:-1]):
            local = tok.item_paths[1:, level] - off[level]
            if name.startswith("sid_"):
                np.testing.assert_array_equal(local, sem.codes[1:, int(name[4:])], err_msg=(v, name))
                assert off[level + 1] - off[level] == sem.codebook_sizes[int(name[4:])]  # one token per centroid
            else:
                np.testing.assert_array_equal(local, getattr(full_catalog, name)[1:], err_msg=(v, name))
    # Without attributes, the disambiguation code is the semantic IDs' own.
    sid = variants["sid"]
    np.testing.assert_array_equal(sid.item_paths[1:, -1] - sid.level_offsets[-2], sem.disamb[1:])
    # Semantic codes make collisions rare, so the cot code level is tiny next to attr's.
    assert variants["cot"].level_sizes[-1] <= variants["sid"].level_sizes[-1] < variants["attr"].level_sizes[-1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_item_tokens_item_over_whole_catalog(variants, variant):
    tok = variants[variant]
    items = np.arange(1, tok.num_items + 1)
    behs = (items % (tok.num_behaviors - 1)) + 1
    tokens = tok.event_tokens(items, behs)
    assert tokens.shape == (tok.num_items * tok.tokens_per_event,)
    back_items, back_behs = tok.decode_events(tokens)
    np.testing.assert_array_equal(back_items, items)
    np.testing.assert_array_equal(back_behs, behs)
    p2i = tok.path_to_item()
    assert len(p2i) == tok.num_items  # paths unique
    assert sorted(p2i[leaf] for leaf in _walk_trie(tok)) == items.tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_level_and_description(variants, variant):
    tok = variants[variant]
    tokens = tok.event_tokens(np.array([5, 9]), np.array([1, 4]))
    levels = tok.token_level(tokens).reshape(2, tok.tokens_per_event)
    assert np.all(levels[:, 0] == BEHAVIOR_LEVEL)
    np.testing.assert_array_equal(levels[:, 1:], np.tile(np.arange(tok.path_length), (2, 1)))
    np.testing.assert_array_equal(tok.token_level([PAD, BOS]), [SPECIAL_LEVEL, SPECIAL_LEVEL])
    # Every token id of the vocabulary has exactly one level, and levels are contiguous and ordered.
    all_levels = tok.token_level(np.arange(tok.vocab_size))
    assert np.all(np.diff(all_levels) >= 0) and all_levels[-1] == tok.path_length - 1
    with pytest.raises(ValueError, match="vocab_size"):
        tok.token_level([tok.vocab_size])
    assert tok.describe_token(PAD) == "PAD" and tok.describe_token(BOS) == "BOS"
    assert tok.describe_token(tokens[0]) == "behavior=1"
    assert tok.describe_token(tokens[-1]).startswith(f"{DISAMBIGUATION}=")


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_all_variants(variants, variant, tmp_path):
    tok = variants[variant]
    tok.save(tmp_path / "t.npz")
    back = ItemTokenizer.load(tmp_path / "t.npz")
    assert back.variant == variant and back.level_names == tok.level_names
    assert back.path_length == tok.path_length and back.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(back.item_paths, tok.item_paths)
    np.testing.assert_array_equal(back.level_offsets, tok.level_offsets)
    for a, b in zip(back.build_trie().items(), tok.build_trie().items()):
        assert a[0] == b[0] and np.array_equal(a[1], b[1])


def test_load_legacy_npz_as_attr(tok, tmp_path):
    # A file written before variants existed has only the four original arrays.
    path = tmp_path / "legacy.npz"
    with open(path, "wb") as f:
        np.savez(f, item_paths=tok.item_paths, level_offsets=tok.level_offsets,
                 behavior_offset=tok.behavior_offset, num_behaviors=tok.num_behaviors)
    back = ItemTokenizer.load(path)
    assert back.variant == "attr" and back.level_names == PATH_LEVELS
    np.testing.assert_array_equal(back.item_paths, tok.item_paths)


def test_from_columns_custom_attributes_and_disambiguation():
    # Two attributes named freely (e.g. MovieLens genre and decade) plus synthetic semantic codes.
    genre = np.array([0, 2, 2, 1, 2])
    decade = np.array([0, 0, 0, 3, 0])
    codes = np.array([[0, 0], [1, 0], [1, 0], [0, 2], [1, 1]])
    cot = ItemTokenizer.from_columns([("genre", genre), ("decade", decade)], codes, semantic_sizes=(2, 3))
    assert cot.level_names == ("genre", "decade", "sid_0", "sid_1", "code") and cot.variant == "cot"
    np.testing.assert_array_equal(cot.item_paths[1:, -1] - cot.level_offsets[-2], [0, 1, 0, 0])
    np.testing.assert_array_equal(cot.level_sizes, [3, 4, 2, 3, 2])
    attr = ItemTokenizer.from_columns([("genre", genre), ("decade", decade)], include_semantic=False)
    np.testing.assert_array_equal(attr.item_paths[1:, -1] - attr.level_offsets[-2], [0, 1, 0, 2])
    assert attr.attribute_names == ("genre", "decade") and attr.num_semantic_levels == 0
    np.testing.assert_array_equal(disambiguation_codes(np.array([[1], [1], [0], [1]])), [0, 1, 0, 2])


@pytest.mark.parametrize("kwargs, match", [
    (dict(include_attributes=False, include_semantic=False), "both be False"),
    (dict(include_semantic=True, semantic_codes=None), "semantic_codes"),
    (dict(semantic_codes=np.zeros((4, 2), np.int64)), "rows"),
    (dict(semantic_codes=np.array([[0], [0], [5]]), semantic_sizes=(3,)), "semantic_sizes"),
    (dict(semantic_codes=np.array([[0], [0], [-1]])), "negative"),
    (dict(semantic_codes=np.zeros((3, 1)), ), "integer"),
    (dict(attributes=[("code", np.array([0, 1, 2]))], include_semantic=False), "reserved"),
    (dict(attributes=[], include_semantic=False), "at least one"),
])
def test_from_columns_bad_input(kwargs, match):
    base = dict(attributes=[("a", np.array([0, 1, 2]))], semantic_codes=np.zeros((3, 1), np.int64))
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ItemTokenizer.from_columns(base.pop("attributes"), base.pop("semantic_codes"), **base)


def test_for_variant_checks(full_catalog):
    with pytest.raises(ValueError, match="variant"):
        ItemTokenizer.for_variant("tiger", full_catalog)
    with pytest.raises(ValueError, match="semantic_ids"):
        ItemTokenizer.for_variant("cot", full_catalog)
    small = fit_residual_kmeans(np.random.default_rng(0).normal(size=(10, 4)), codes_per_level=2)
    with pytest.raises(ValueError, match="cover 10 items"):
        ItemTokenizer.for_variant("sid", full_catalog, small)


def test_decode_events_rejects_non_items(tok):
    with pytest.raises(ValueError, match="whole events"):
        tok.decode_events(np.zeros(TOKENS_PER_EVENT + 1, np.int64))
    # Item 1's path with a disambiguation code no item with its attributes has.
    bad = tok.event_tokens(np.array([1]), np.array([1]))
    siblings = (tok.item_paths[1:, :-1] == tok.item_paths[1, :-1]).all(1).sum()
    bad[-1] = tok.level_offsets[-2] + siblings
    with pytest.raises(ValueError, match="not an item path"):
        tok.decode_events(bad)
    # An event that starts with a path token instead of a behaviour.
    with pytest.raises(ValueError, match="behaviour"):
        tok.decode_events(np.r_[tok.level_offsets[0], tok.item_paths[1]])
