"""Unit tests of the item tokenizer: paths, vocabulary layout, event tokens, trie, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from data.simulator import SimConfig, simulate
from models.tokenizer import BOS, PAD, PATH_LENGTH, PATH_LEVELS, TOKENS_PER_EVENT, ItemTokenizer


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
