"""The dataset contract (data/dataset.py, docs/dataset.md): the valid fixture loads, every bad case is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.dataset import DEFAULT_EVENTS, Dataset, DatasetError, DatasetMeta, load_dataset, main
from tests.data import fixture_dataset as fx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Dataset:
    return load_dataset(fx.write_fixture(tmp_path_factory.mktemp("shop"), ads=True))


def _raw_events(directory: Path) -> pd.DataFrame:
    return pd.read_parquet(directory / "events.parquet")


# ------------------------------------------------------------------------------------------------- valid data


def test_items_have_normalized_dtypes_and_values(shop):
    items = shop.items
    assert list(items.columns) == ["item_id", "title", "category", "brand", "price", "image"]  # extras dropped
    assert items["item_id"].dtype == np.int64
    assert items["item_id"].tolist() == fx.ITEM_IDS  # sparse ids kept, file order kept
    for col in ("title", "category"):
        assert items[col].dtype == "str" and all(isinstance(v, str) for v in items[col])
    assert items["brand"].tolist() == fx.BRANDS  # None where the brand is missing
    assert items["price"].dtype == np.float64
    np.testing.assert_array_equal(items["price"].isna(), [p is None for p in fx.PRICES])
    assert items["image"].tolist() == [p or None for p in fx.IMAGE_OF_ITEM]  # "" and null -> None
    for rel in items["image"].dropna():
        assert shop.image_path(rel).is_file()


def test_categories(shop):
    levels = shop.category_levels()
    assert levels[0] == ["tops"] and levels[2] == ["tops", "t-shirts", "graphic tees"]
    assert {len(lv) for lv in levels} == {1, 2, 3}
    assert shop.top_categories() == ["bags", "home", "shoes", "tops"]


def test_events_dtypes_behavior_codes_and_stable_sort(shop):
    ev = shop.events
    assert list(ev.columns) == ["user_id", "item_id", "event", "behavior", "timestamp"]
    assert ev["user_id"].dtype == "str" and ev["event"].dtype == "str"
    for col in ("item_id", "behavior", "timestamp"):
        assert ev[col].dtype == np.int64
    np.testing.assert_array_equal(ev["behavior"], [1 + DEFAULT_EVENTS.index(e) for e in ev["event"]])
    assert [shop.meta.behavior_code(e) for e in DEFAULT_EVENTS] == [1, 2, 3, 4]

    raw = _raw_events(shop.directory)
    raw = raw.assign(timestamp=raw["timestamp"].astype("datetime64[s]").astype(np.int64))
    expected = raw.iloc[np.lexsort((raw["timestamp"].to_numpy(), raw["user_id"].to_numpy()))]
    np.testing.assert_array_equal(ev["item_id"], expected["item_id"])  # ties keep their file order
    np.testing.assert_array_equal(ev["timestamp"], expected["timestamp"])
    keys = list(zip(ev["user_id"], ev["timestamp"]))
    assert keys == sorted(keys)


def test_ties_keep_file_order(tmp_path):
    def tie(df):
        df = df.copy()
        df.loc[[20, 30, 40], ["user_id", "timestamp"]] = ["u-z", df.loc[20, "timestamp"]]
        df.loc[[20, 30, 40], "item_id"] = [fx.ITEM_IDS[9], fx.ITEM_IDS[1], fx.ITEM_IDS[5]]
        return df

    ds = load_dataset(fx.write_fixture(tmp_path, events=tie))
    z = ds.events[ds.events["user_id"] == "u-z"]
    assert z["item_id"].tolist() == [fx.ITEM_IDS[9], fx.ITEM_IDS[1], fx.ITEM_IDS[5]]


def test_summary_counts_are_json(shop):
    s = json.loads(json.dumps(shop.summary()))
    raw = _raw_events(shop.directory)
    assert s["items"] == 12 and s["users"] == len(fx.USERS) and s["events"] == fx.NUM_EVENTS
    assert s["events_by_name"] == {name: int((raw["event"] == name).sum()) for name in DEFAULT_EVENTS}
    assert s["impressions"] == 40 and s["campaigns"] == 3 and s["ad_impressions"] == 30
    assert s["items_with_images"] == 8 and s["items_with_brand"] == 8 and s["items_with_price"] == 9
    assert s["category_depth"] == {"min": 1, "max": 3}
    assert s["name"] == shop.directory.name and s["conversion_event"] == "purchase"


def test_impressions_and_ads(shop):
    imp = shop.impressions
    assert imp["clicked"].dtype == bool and imp["timestamp"].dtype == np.int64 and imp["user_id"].dtype == "str"
    assert shop.has_ads
    camp = shop.campaigns
    assert camp["campaign_id"].tolist() == [900, 17, 4242]
    assert camp["item_id"].dtype == "Int64" and camp["item_id"].isna().tolist() == [False, False, True]
    assert camp["image"].tolist() == ["images/b.jpg", None, "images/a.png"]
    assert "target_category" in camp.columns  # targeting columns are kept
    ads = shop.ad_impressions
    assert ads["clicked"].dtype == bool  # written as 0/1 ints
    assert ads["clicked"].sum() == fx.ad_impressions_table()["clicked"].sum()


def test_optional_tables_absent(tmp_path):
    ds = load_dataset(fx.write_fixture(tmp_path, with_impressions=False))
    assert ds.impressions is None and ds.campaigns is None and ds.ad_impressions is None and not ds.has_ads
    assert ds.summary()["impressions"] == 0 and ds.summary()["campaigns"] == 0


def _frames(ds: Dataset) -> dict[str, pd.DataFrame]:
    return {n: getattr(ds, n) for n in ("items", "events", "impressions", "campaigns", "ad_impressions")}


def test_csv_variant_equals_parquet(shop, tmp_path):
    csv = load_dataset(fx.write_fixture(tmp_path, fmt="csv", ads=True))
    assert csv.files["items"] == "items.csv"
    for name, frame in _frames(shop).items():
        pd.testing.assert_frame_equal(getattr(csv, name), frame, obj=name)


@pytest.mark.parametrize("kind", ["int", "aware"])
def test_timestamp_types_are_equivalent(shop, tmp_path, kind):
    other = load_dataset(fx.write_fixture(tmp_path, timestamps=kind, ads=True))
    pd.testing.assert_frame_equal(other.events, shop.events)


def test_iso_text_timestamps(shop, tmp_path):
    def iso(df):
        ts = pd.to_datetime(df["timestamp"]).dt.tz_localize("UTC").dt.tz_convert("America/New_York")
        return df.assign(timestamp=ts.map(lambda t: t.isoformat()))  # offsets such as -05:00

    other = load_dataset(fx.write_fixture(tmp_path, events=iso))
    pd.testing.assert_frame_equal(other.events, shop.events)


def test_numeric_user_ids_become_strings(tmp_path):
    users = {u: 100 + i for i, u in enumerate(fx.USERS)}
    ds = load_dataset(fx.write_fixture(tmp_path / "p", events=lambda df: df.assign(user_id=df["user_id"].map(users))))
    csv = load_dataset(fx.write_fixture(tmp_path / "c", fmt="csv",
                                        events=lambda df: df.assign(user_id=df["user_id"].map(users))))
    assert sorted(ds.events["user_id"].unique()) == [str(v) for v in sorted(users.values())]
    pd.testing.assert_frame_equal(ds.events, csv.events)


def test_movielens_like_vocabulary(tmp_path):
    meta = {"name": "ml-like", "events": list(fx.MOVIELENS_EVENTS), "time_zone": "Europe/Berlin"}
    ds = load_dataset(fx.write_fixture(tmp_path, vocabulary=fx.MOVIELENS_EVENTS, meta=meta))
    assert ds.meta == DatasetMeta("ml-like", fx.MOVIELENS_EVENTS, "rating_5", "Europe/Berlin")
    assert ds.meta.behavior_code("rating_3") == 3 and ds.meta.conversion_code == 5
    np.testing.assert_array_equal(ds.events["behavior"], [int(e[-1]) for e in ds.events["event"]])
    assert list(ds.summary()["events_by_name"]) == list(fx.MOVIELENS_EVENTS)
    with pytest.raises(KeyError, match="rating_1"):
        ds.meta.behavior_code("view")


def test_repeats_flag(tmp_path):
    assert load_dataset(fx.write_fixture(tmp_path / "a")).meta.repeats is True
    meta = {"name": "ml-like", "repeats": False}
    assert load_dataset(fx.write_fixture(tmp_path / "b", meta=meta)).meta.repeats is False
    with pytest.raises(DatasetError, match="expected true or false") as err:
        load_dataset(fx.write_fixture(tmp_path / "c", meta={"repeats": "no"}))
    assert err.value.file == "dataset.json" and err.value.column == "repeats"


def test_default_vocabulary_rejects_custom_names(tmp_path):
    with pytest.raises(DatasetError, match="unknown event name") as err:
        load_dataset(fx.write_fixture(tmp_path, vocabulary=fx.MOVIELENS_EVENTS))
    assert err.value.file == "events.parquet" and err.value.column == "event"


def test_pandas_index_column_is_read(shop, tmp_path):
    fx.write_fixture(tmp_path, ads=True)
    fx.items_table().set_index("item_id").to_parquet(tmp_path / "items.parquet")
    pd.testing.assert_frame_equal(load_dataset(tmp_path).items, shop.items)


def test_check_images_false_skips_decoding_only(tmp_path):
    directory = tmp_path / "d"
    fx.write_corrupt(directory, "unreadable_image")
    assert load_dataset(directory, check_images=False).items["image"].iloc[8] == "images/broken.png"
    with pytest.raises(DatasetError, match="image file not found"):
        fx.write_corrupt(tmp_path / "m", "missing_image")
        load_dataset(tmp_path / "m", check_images=False)


# --------------------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("kind", fx.CORRUPTIONS)
def test_corrupt_variant_names_file_column_and_row(tmp_path, kind):
    expected = fx.write_corrupt(tmp_path, kind)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    e, msg = err.value, str(err.value)
    assert (e.file, e.column, e.row) == (expected.file, expected.column, expected.row), msg
    assert msg.startswith(expected.file + ": ") and expected.text in msg, msg
    if expected.column is not None:
        assert f"column {expected.column}" in msg
    if expected.row is not None:
        assert f"row {expected.row} (" in msg  # the example row with its values
        assert e.values and expected.column in e.values


def test_missing_required_file_lists_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(fx.write_fixture(tmp_path, events=None))
    assert err.value.file == "events.parquet" and "items.parquet" in str(err.value)


def test_ad_impressions_without_campaigns(tmp_path):
    with pytest.raises(DatasetError, match="ad_impressions without campaigns"):
        load_dataset(fx.write_fixture(tmp_path, ads=True, campaigns=None))


def test_nothing_is_dropped_a_null_user_raises(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(fx.write_fixture(tmp_path, events=lambda df: fx._set(df, 11, "user_id", None)))
    assert (err.value.column, err.value.row) == ("user_id", 11)


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_prints_summary(shop, capsys):
    assert main([str(shop.directory)]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == fx.NUM_EVENTS


def test_cli_error_exit_2_without_traceback(tmp_path):
    fx.write_corrupt(tmp_path, "duplicate_item_id")
    code = "import sys, data.dataset; sys.exit(int('torch' in sys.modules))"  # the validator does not need torch
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "data.dataset", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and "items.parquet: column item_id, row 3" in proc.stderr
