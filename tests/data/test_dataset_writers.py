"""The dataset-contract writers (docs/dataset.md): data.simulator.write_dataset on a small world and
data.movielens.write_movielens on a hand-made RecBole atomic pair. When the reader (data/dataset.py) is
present, every written dataset must also load with it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data.movielens import genre_category, movie_title, write_movielens
from data.simulator import (COLD_LAUNCH_QUANTILE, DATASET_EVENTS, SimConfig, category_path, simulate, summary,
                            write_dataset)

REPO = Path(__file__).resolve().parents[2]
SMALL = SimConfig(num_items=60, num_users=40, num_campaigns=12)
AD_IMPRESSIONS = (30, 10, 10)  # per campaign (train, calib, test): keeps the test small
DEFAULT_EVENTS = ("view", "add_to_cart", "remove_from_cart", "purchase")

# Arrow type per contract column (optional columns are checked only when present).
INT64, STRING, FLOAT64, BOOL = "int64", "string", "double", "bool"
ITEMS = {"item_id": INT64, "title": STRING, "category": STRING}
ITEMS_OPTIONAL = {"brand": STRING, "price": FLOAT64, "image": STRING}
EVENTS = {"item_id": INT64, "event": STRING, "timestamp": INT64}
IMPRESSIONS = {"item_id": INT64, "timestamp": INT64, "clicked": BOOL}
CAMPAIGNS = {"campaign_id": INT64, "title": STRING}
CAMPAIGNS_OPTIONAL = {"image": STRING, "item_id": INT64}
AD_IMPRESSIONS_COLS = {"campaign_id": INT64, "timestamp": INT64, "clicked": BOOL}


def _fake_fashion_mnist(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A tiny stand-in for the Fashion-MNIST train split: every class has images."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n, dtype=np.int64) % 10


def _write_sim(world, out: Path, seed: int = 0) -> dict:
    return write_dataset(world, out, seed=seed, train_images=_fake_fashion_mnist(),
                         campaign_impressions=AD_IMPRESSIONS)


@pytest.fixture(scope="module")
def world():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def sim_dir(world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim") / "dataset"
    return out, _write_sim(world, out)


@pytest.fixture(scope="module")
def campaigns(world):
    """The simulator's campaigns and full ad log, as write_dataset builds them (seed 0)."""
    from data.campaigns import build_campaigns
    return build_campaigns(world, seed=0, impressions=AD_IMPRESSIONS)


def _written_ad_rows(cs) -> np.ndarray:
    """Mask over the simulator's ad log of the rows ad_impressions.parquet holds: every impression of a warm
    campaign; a cold-start campaign launches late, so only its impressions after the COLD_LAUNCH_QUANTILE time
    point of the whole log."""
    cut = np.quantile(cs.log_time, COLD_LAUNCH_QUANTILE)
    return cs.warm[cs.log_campaign] | (cs.log_time > cut)


def _types(path: Path) -> dict[str, str]:
    return {f.name: str(f.type) for f in pq.read_schema(path)}


def _check_schema(path: Path, required: dict, optional: dict | None = None, user_id: bool = False):
    types = _types(path)
    for col, t in required.items():
        assert types.get(col) == t, f"{path.name}: {col} is {types.get(col)}, expected {t}"
    for col, t in (optional or {}).items():
        if col in types:
            assert types[col] == t, f"{path.name}: {col} is {types[col]}, expected {t}"
    if user_id:
        assert types.get("user_id") in (INT64, STRING), f"{path.name}: user_id is {types.get('user_id')}"


def _check_common(d: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The contract checks every dataset passes; returns (items, events, dataset.json)."""
    _check_schema(d / "items.parquet", ITEMS, ITEMS_OPTIONAL)
    _check_schema(d / "events.parquet", EVENTS, user_id=True)
    items, events = pd.read_parquet(d / "items.parquet"), pd.read_parquet(d / "events.parquet")
    assert items["item_id"].is_unique and len(items) > 0 and len(events) > 0
    assert items["title"].notna().all() and (items["title"].str.len() > 0).all()
    for path in items["category"]:
        levels = path.split(" > ")
        assert len(levels) >= 1 and all(level.strip() == level and level for level in levels), path
    assert events["item_id"].isin(items["item_id"]).all()
    assert events["user_id"].notna().all() and events["timestamp"].notna().all()
    meta = json.loads((d / "dataset.json").read_text())
    assert set(meta) >= {"name", "events", "conversion_event", "time_zone"} and meta["time_zone"] == "UTC"
    assert meta["conversion_event"] in meta["events"] and len(set(meta["events"])) == len(meta["events"])
    assert set(events["event"]) <= set(meta["events"])
    return items, events, meta


def _reader():
    """data.dataset.load_dataset when the reader exists, else None."""
    if importlib.util.find_spec("data.dataset") is None:
        return None
    from data.dataset import load_dataset
    return load_dataset


def _tree_digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- simulator

def test_simulator_files_and_counts(world, campaigns, sim_dir):
    d, counts = sim_dir
    names = {p.name for p in d.iterdir()}
    assert names == {"items.parquet", "events.parquet", "impressions.parquet", "campaigns.parquet",
                     "ad_impressions.parquet", "dataset.json", "summary.json", "images"}
    assert not list(d.parent.glob(".*partial*"))  # the staging folder was renamed into place
    n_campaigns = min(SMALL.num_campaigns, SMALL.num_items)
    # Ad impressions: all of the warm campaigns' + the cold-start campaigns' after the launch point.
    cs = campaigns
    n_warm = int(cs.warm.sum())
    cut = np.quantile(cs.log_time, COLD_LAUNCH_QUANTILE)
    late_cold = int((~cs.warm[cs.log_campaign] & (cs.log_time > cut)).sum())
    assert 0 < n_warm < n_campaigns and 0 < late_cold < (n_campaigns - n_warm) * sum(AD_IMPRESSIONS)
    assert counts == {"images": SMALL.num_items, "items": SMALL.num_items, "events": len(world.event_item),
                      "impressions": len(world.impression_item), "campaigns": n_campaigns,
                      "ad_impressions": n_warm * sum(AD_IMPRESSIONS) + late_cold, "users": SMALL.num_users}
    assert pq.read_metadata(d / "ad_impressions.parquet").num_rows == counts["ad_impressions"]
    assert json.loads((d / "summary.json").read_text()) == summary(world)


def test_simulator_contract(world, sim_dir):
    d, _ = sim_dir
    items, events, meta = _check_common(d)
    assert meta == {"name": "simulator-seed0", "events": list(DEFAULT_EVENTS), "conversion_event": "purchase",
                    "time_zone": "UTC", "repeats": True}
    assert tuple(DATASET_EVENTS) == DEFAULT_EVENTS
    assert _types(d / "items.parquet") == {"item_id": INT64, "title": STRING, "category": STRING,
                                           "brand": STRING, "price": FLOAT64, "image": STRING}
    assert _types(d / "events.parquet")["user_id"] == INT64
    cat = world.catalog
    assert items["item_id"].tolist() == list(range(1, SMALL.num_items + 1))
    assert items["title"].tolist() == cat.titles[1:]
    assert items["category"].tolist() == [category_path(SMALL, lf) for lf in cat.leaf_category[1:]]
    assert all(c.count(" > ") == 1 for c in items["category"])
    # The top level is the category word of the title ("brand012 slim tops t-shirt fit $21.50").
    assert all(f" {c.split(' > ')[0]} {c.split(' > ')[1]} " in t for c, t in zip(items["category"], items["title"]))
    assert items["brand"].tolist() == [f"brand{b:03d}" for b in cat.brand[1:]]
    np.testing.assert_array_equal(items["price"].to_numpy(np.float32), cat.price[1:])
    # Behaviour code = 1 + index in the vocabulary.
    codes = events["event"].map({e: i + 1 for i, e in enumerate(meta["events"])}).to_numpy()
    np.testing.assert_array_equal(codes, world.event_behavior)
    np.testing.assert_array_equal(events["user_id"], world.event_user)
    np.testing.assert_array_equal(events["timestamp"], world.event_timestamp)


def test_simulator_images_open(world, sim_dir):
    d, _ = sim_dir
    items = pd.read_parquet(d / "items.parquet")
    from data.creatives import catalog_images
    expected = catalog_images(world.catalog, SMALL, seed=0, train=_fake_fashion_mnist()).item_images
    for item_id, rel in zip(items["item_id"], items["image"]):
        assert not Path(rel).is_absolute()
        with Image.open(d / rel) as im:
            assert im.format == "PNG" and im.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(im), expected[item_id])
    assert len(list((d / "images").iterdir())) == len(items)


def test_simulator_impressions_and_campaigns(world, campaigns, sim_dir):
    d, _ = sim_dir
    _check_schema(d / "impressions.parquet", IMPRESSIONS, user_id=True)
    _check_schema(d / "campaigns.parquet", CAMPAIGNS, CAMPAIGNS_OPTIONAL)
    _check_schema(d / "ad_impressions.parquet", AD_IMPRESSIONS_COLS, user_id=True)
    items = pd.read_parquet(d / "items.parquet")
    imp = pd.read_parquet(d / "impressions.parquet")
    np.testing.assert_array_equal(imp["clicked"], world.impression_click.astype(bool))
    assert imp["item_id"].isin(items["item_id"]).all()
    camps = pd.read_parquet(d / "campaigns.parquet")
    ads = pd.read_parquet(d / "ad_impressions.parquet")
    assert camps["campaign_id"].is_unique and ads["campaign_id"].isin(camps["campaign_id"]).all()
    np.testing.assert_array_equal(camps["item_id"], world.campaign_item)
    assert camps["item_id"].isin(items["item_id"]).all()
    # The creative image is the promoted item's image; the copy names the product.
    image_of = dict(zip(items["item_id"], items["image"]))
    assert camps["image"].tolist() == [image_of[i] for i in camps["item_id"]]
    assert all((d / p).is_file() for p in camps["image"])
    cs = campaigns
    assert camps["title"].tolist() == cs.text
    # The ad log is the simulator's, in its order, less the cold-start campaigns' impressions before launch.
    logged = _written_ad_rows(cs)
    assert 0 < (~logged).sum() and not (~logged & cs.warm[cs.log_campaign]).any()
    np.testing.assert_array_equal(ads["campaign_id"], cs.log_campaign[logged])
    np.testing.assert_array_equal(ads["timestamp"], cs.log_time[logged])
    np.testing.assert_array_equal(ads["clicked"], cs.log_click[logged].astype(bool))
    np.testing.assert_array_equal(ads["user_id"], cs.log_user[logged])
    per_campaign = np.bincount(ads["campaign_id"], minlength=cs.num_campaigns)
    assert (per_campaign[cs.warm] == sum(AD_IMPRESSIONS)).all()  # warm: the whole log
    assert (per_campaign[~cs.warm] < sum(AD_IMPRESSIONS)).all()  # cold: launched late
    # A time split (oldest 70% TRAIN) of the written log sees no impression of a cold-start campaign.
    cold_rows = ~cs.warm[ads["campaign_id"].to_numpy()]
    assert cold_rows.any() and ads["timestamp"][cold_rows].min() > np.quantile(ads["timestamp"], 0.7)
    # Targeting: the promoted item's own top category is always targeted, and its price is in range.
    top_of = {i: c.split(" > ")[0] for i, c in zip(items["item_id"], items["category"])}
    price_of = dict(zip(items["item_id"], items["price"]))
    for item_id, cats, lo, hi in zip(camps["item_id"], camps["target_categories"], camps["target_price_min"],
                                     camps["target_price_max"]):
        assert top_of[item_id] in list(cats) and lo <= price_of[item_id] <= hi


def test_simulator_deterministic(world, sim_dir, tmp_path):
    d, _ = sim_dir
    again = tmp_path / "again"
    _write_sim(simulate(SMALL), again)
    assert _tree_digest(again) == _tree_digest(d)
    other = tmp_path / "seed1"
    _write_sim(simulate(SimConfig(seed=1, num_items=60, num_users=40, num_campaigns=12)), other, seed=1)
    assert json.loads((other / "dataset.json").read_text())["name"] == "simulator-seed1"
    assert _tree_digest(other)["events.parquet"] != _tree_digest(d)["events.parquet"]


def test_simulator_refuses_non_empty_dir(world, sim_dir, tmp_path):
    d, _ = sim_dir
    (tmp_path / "stuff.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        _write_sim(world, tmp_path)
    assert (tmp_path / "stuff.txt").read_text() == "mine"
    with pytest.raises(FileExistsError):  # overwrite only replaces a folder that holds a dataset
        write_dataset(world, tmp_path, overwrite=True, train_images=_fake_fashion_mnist(),
                      campaign_impressions=AD_IMPRESSIONS)
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_sim(world, empty)
    assert (empty / "items.parquet").is_file()
    write_dataset(world, empty, overwrite=True, train_images=_fake_fashion_mnist(),
                  campaign_impressions=AD_IMPRESSIONS)
    assert _tree_digest(empty) == _tree_digest(d)


def test_simulator_cli(tmp_path):
    """--out DIR writes the dataset, --summary FILE the summary JSON (real Fashion-MNIST images)."""
    from data import fashion_mnist as fm
    if not (fm.data_dir() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh)")
    out, summary_file = tmp_path / "ds", tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "data.simulator", "--num-items", "40", "--num-users", "20",
                           "--seed", "2", "--out", str(out), "--summary", str(summary_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(summary_file.read_text()) == json.loads((out / "summary.json").read_text())
    assert json.loads(summary_file.read_text())["items"] == 40
    items, _, meta = _check_common(out)
    assert meta["name"] == "simulator-seed2"
    with Image.open(out / items["image"].iloc[0]) as im:
        assert im.size == (28, 28) and np.asarray(im).any()


def test_simulator_loads_with_reader(world, sim_dir):
    load_dataset = _reader()
    if load_dataset is None:
        pytest.skip("data/dataset.py (the reader) is not there yet")
    d, counts = sim_dir
    ds = load_dataset(d)
    assert ds.meta.name == "simulator-seed0" and ds.meta.events == DEFAULT_EVENTS
    assert ds.meta.conversion_event == "purchase" and ds.meta.time_zone == "UTC"
    assert ds.has_ads
    s = ds.summary()
    expected = summary(world)
    assert s["items"] == counts["items"] and s["items_with_images"] == s["items_with_brand"] == counts["items"]
    assert s["items_with_price"] == counts["items"]
    assert s["users"] == counts["users"] and s["events"] == counts["events"]
    assert s["events_by_name"] == expected["behaviors"]
    assert s["impressions"] == counts["impressions"]
    assert s["impression_clicks"] == int(world.impression_click.sum())
    assert s["campaigns"] == counts["campaigns"] and s["ad_impressions"] == counts["ad_impressions"]
    assert s["category_depth"] == {"min": 2, "max": 2}
    # Behaviour codes read back = the simulator's (the reader orders users as text; within a user the order
    # is chronological in both).
    ev = ds.events.assign(user=ds.events["user_id"].astype(np.int64)).sort_values("user", kind="stable")
    np.testing.assert_array_equal(ev["behavior"], world.event_behavior)
    np.testing.assert_array_equal(ev["item_id"], world.event_item)
    np.testing.assert_array_equal(ev["timestamp"], world.event_timestamp)
    # Optional targeting columns travel with the campaigns.
    assert {"target_categories", "target_price_min", "target_price_max"} <= set(ds.campaigns.columns)
    np.testing.assert_array_equal(ds.campaigns["item_id"].to_numpy(np.int64), world.campaign_item)
    assert ds.image_path(ds.items["image"].iloc[0]).is_file()


# ---------------------------------------------------------------------------------------------- MovieLens

ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tAlpha\t1995\tComedy Drama\n"
        "2\tBeta\t1950\tAction\n"
        "7\tGamma\tV\tDrama\n"
        "99\tNever Rated\t1997\tHorror\n"
        "5\tNo Genre\t1996\t\n")
# Ratings include a half star (3.5 -> 4) and a timestamp tie (file order must survive).
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "5\t10\t4\t300\n"
         "8\t2\t5\t100\n"
         "5\t7\t2\t100\n"
         "5\t2\t5\t100\n"
         "8\t10\t1\t50\n"
         "12\t5\t3.5\t70\n")


@pytest.fixture
def ml_files(tmp_path):
    (tmp_path / "x.item").write_text(ITEM)
    (tmp_path / "x.inter").write_text(INTER)
    return tmp_path / "x.inter", tmp_path / "x.item"


def test_movielens_contract(ml_files, tmp_path):
    out = tmp_path / "ml"
    counts = write_movielens(*ml_files, out)
    assert counts == {"items": 5, "events": 6, "users": 3, "rated_items": 4}
    assert {p.name for p in out.iterdir()} == {"items.parquet", "events.parquet", "dataset.json"}
    items, events, meta = _check_common(out)
    assert meta == {"name": "movielens-100k", "events": [f"rating_{r}" for r in range(1, 6)],
                    "conversion_event": "rating_5", "time_zone": "UTC", "repeats": False}
    assert _types(out / "items.parquet") == {"item_id": INT64, "title": STRING, "category": STRING}
    assert _types(out / "events.parquet") == {"user_id": INT64, "item_id": INT64, "event": STRING,
                                              "timestamp": INT64}
    assert items["item_id"].tolist() == [2, 5, 7, 10, 99]
    assert items["title"].tolist() == ["Beta (1950)", "No Genre (1996)", "Gamma", "Alpha (1995)",
                                       "Never Rated (1997)"]
    assert items["category"].tolist() == ["Action > Action", "unknown > unknown", "Drama > Drama",
                                          "Comedy > Comedy, Drama", "Horror > Horror"]
    # Sorted by (user, time), ties in file order; user ids as in the file.
    assert events.to_dict("list") == {"user_id": [5, 5, 5, 8, 8, 12], "item_id": [7, 2, 10, 10, 2, 5],
                                      "event": ["rating_2", "rating_5", "rating_4", "rating_1", "rating_5",
                                                "rating_4"],
                                      "timestamp": [100, 100, 300, 50, 100, 70]}


def test_movielens_string_user_ids_and_errors(ml_files, tmp_path):
    inter, item = ml_files
    inter.write_text(INTER.replace("\n5\t", "\nu05\t"))
    write_movielens(inter, item, tmp_path / "ml")
    assert _types(tmp_path / "ml" / "events.parquet")["user_id"] == STRING
    events = pd.read_parquet(tmp_path / "ml" / "events.parquet")
    assert sorted(set(events["user_id"])) == ["12", "8", "u05"]
    inter.write_text(INTER + "5\t1234\t4\t400\n")
    with pytest.raises(ValueError, match="no row in the item file"):
        write_movielens(inter, item, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    inter.write_text(INTER)
    item.write_text(ITEM + "10\tAgain\t1990\tDrama\n")
    with pytest.raises(ValueError, match="duplicate item ids"):
        write_movielens(inter, item, tmp_path / "bad")


def test_movielens_deterministic(ml_files, tmp_path):
    write_movielens(*ml_files, tmp_path / "a")
    write_movielens(*ml_files, tmp_path / "b")
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


def test_movielens_helpers():
    assert movie_title("Toy Story", "1995") == "Toy Story (1995)" and movie_title("X", "") == "X"
    assert genre_category("Animation Children's Comedy") == "Animation > Animation, Children's, Comedy"
    assert genre_category("") == "unknown > unknown"


def test_movielens_loads_with_reader(ml_files, tmp_path):
    load_dataset = _reader()
    if load_dataset is None:
        pytest.skip("data/dataset.py (the reader) is not there yet")
    counts = write_movielens(*ml_files, tmp_path / "ml")
    ds = load_dataset(tmp_path / "ml")
    assert ds.meta.name == "movielens-100k" and ds.meta.events == tuple(f"rating_{r}" for r in range(1, 6))
    assert ds.meta.conversion_code == 5 and not ds.has_ads and ds.impressions is None
    assert len(ds.items) == counts["items"] and len(ds.events) == counts["events"]
    assert ds.summary()["users"] == counts["users"]
    # Star rating r is behaviour code r.
    stars = ds.events["event"].str.removeprefix("rating_").astype(int)
    np.testing.assert_array_equal(ds.events["behavior"], stars)
    assert sorted(set(ds.events["user_id"])) == ["12", "5", "8"]
