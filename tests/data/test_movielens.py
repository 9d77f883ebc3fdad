"""MovieLens-100k loader: the RecBole atomic format on hand-made files, and the real file from the wheel."""

import numpy as np
import pytest

from data.movielens import (build_movielens, fetch_movielens_100k, load_movielens_100k, parse_atomic_file,
                            year_bucket)

ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tAlpha\t1995\tComedy Drama\n"
        "2\tBeta\t1950\tAction\n"
        "7\tGamma\tV\tDrama\n"
        "99\tNever Rated\t1997\tHorror\n")
# user 5: three events with a timestamp tie (file order must survive); user 8: two events (dropped at min 3).
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "5\t10\t4\t300\n"
         "8\t2\t5\t100\n"
         "5\t7\t2\t100\n"
         "5\t2\t5\t100\n"
         "8\t10\t1\t50\n")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "x.item").write_text(ITEM)
    (tmp_path / "x.inter").write_text(INTER)
    return parse_atomic_file(tmp_path / "x.inter"), parse_atomic_file(tmp_path / "x.item")


def test_parse_atomic_file(files):
    inter, item = files
    assert list(inter) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter["item_id"] == ["10", "2", "7", "2", "10"]
    assert item["class"][0] == "Comedy Drama"


def test_parse_rejects_bad_header_and_rows(tmp_path):
    (tmp_path / "a").write_text("user_id\titem_id:token\n1\t2\n")
    with pytest.raises(ValueError, match="name:type"):
        parse_atomic_file(tmp_path / "a")
    (tmp_path / "b").write_text("user_id:token\titem_id:token\n1\n")
    with pytest.raises(ValueError, match="1 fields"):
        parse_atomic_file(tmp_path / "b")


def test_build_filters_reindexes_and_orders(files):
    ds = build_movielens(*files, min_user_events=3)
    assert ds.num_users == 1  # user 8 has only 2 ratings
    # Items rated by kept users, ascending original id: 2 -> 1, 7 -> 2, 10 -> 3; item 99 is never rated.
    assert ds.num_items == 3
    # Chronological; items 7 and 2 tie at t=100 and keep file order (7 then 2); item 10 (t=300) is last.
    assert ds.user_items[0].tolist() == [2, 1, 3]
    assert ds.user_timestamps[0].tolist() == [100.0, 100.0, 300.0]
    assert ds.user_behaviors[0].tolist() == [2, 5, 4]  # star ratings
    assert ds.behavior_names == ("pad", "rating_1", "rating_2", "rating_3", "rating_4", "rating_5")
    assert list(ds.item_attributes) == ["genre", "genres", "year_bucket"]
    # Genres sorted: Action 0, Comedy 1, Drama 2; first listed genre of item 10 ("Comedy Drama") is Comedy.
    assert ds.item_attributes["genre"][1:].tolist() == [0, 2, 1]
    assert ds.item_attributes["year_bucket"][1:].tolist() == [year_bucket("1950"), year_bucket("V"),
                                                              year_bucket("1995")]
    assert ds.item_texts[3] == "Alpha (1995): Comedy, Drama"
    single = build_movielens(*files, min_user_events=2, behaviors="single")
    assert single.num_users == 2 and single.behavior_names == ("pad", "rate")
    assert all((b == 1).all() for b in single.user_behaviors)


def test_build_errors(files):
    with pytest.raises(ValueError, match="behaviors"):
        build_movielens(*files, behaviors="stars")
    with pytest.raises(ValueError, match="no user"):
        build_movielens(*files, min_user_events=10)


def test_year_buckets():
    assert year_bucket("1930") == 0 and year_bucket("1960") == 1 and year_bucket("1995") == 4
    assert year_bucket("1998") == 6 and year_bucket("unknown") == year_bucket("V") == 7


@pytest.fixture(scope="module")
def ml_cache(tmp_path_factory):
    # Downloads the recbole wheel from PyPI once for this module; nothing is written into the repository.
    return tmp_path_factory.mktemp("recserve-cache")


def test_real_movielens_100k(ml_cache):
    ds = load_movielens_100k(ml_cache)
    assert (ml_cache / "ml-100k" / "ml-100k.inter").is_file()
    assert ds.num_users == 943 and ds.num_items == 1682 and ds.num_events == 100_000
    assert min(len(x) for x in ds.user_items) >= 5
    assert all((np.diff(t) >= 0).all() for t in ds.user_timestamps)
    assert ds.attribute_cardinalities()["genre"] == 19  # 18 genres + "unknown"
    assert ds.item_texts[1].startswith("Toy Story (1995)")
    # The second call reads the cache (no download), giving the same data.
    assert fetch_movielens_100k(ml_cache) == ml_cache / "ml-100k"
    again = load_movielens_100k(ml_cache)
    assert all((a == b).all() for a, b in zip(ds.user_items, again.user_items))
