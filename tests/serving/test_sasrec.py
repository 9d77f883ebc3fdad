"""SASRec as a served retrieval source: its exported scores, the eligible top-n, side_retrieve over a batch, and
the rank step's merge in the build-picked source priority (with its ranker and calibration, real files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exporters.onnx_export import export_ranker, export_sasrec
from exporters.ordering import rank_sources, score_sources, write_ordering, write_priority
from models.ranking.model import Ranker, RankerConfig
from models.sasrec import SASRecConfig, SASRecModel, load_checkpoint, save_checkpoint
from serving import graph
from serving.calibration import CALIBRATOR_FILE, IsotonicCalibrator
from serving.catalog import ItemIds, save_top_category
from serving.clip.ann_index import build_index, config_for, save_index
from serving.clip.retrieval import ITEM_EMBEDDINGS_FILE, ITEM_INDEX_FILE
from serving.contract import ServingLimits
from serving.sasrec import OnnxSasrec, top_eligible
from serving.steps import Rank, SideRetrieve, load_source_priority

N = 30
LIMITS = ServingLimits(num_items=N, num_categories=3, max_history=8, sasrec_candidates=5)


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_items=N, max_len=LIMITS.max_history, dropout=0.0)).eval()
    out = tmp_path_factory.mktemp("sasrec_retrieve")
    diff = export_sasrec(model, out)
    assert diff["sasrec.onnx"] < 1e-4
    save_checkpoint(model, out)
    save_top_category(out, np.arange(N + 1) % 3)  # item i's top category is i % 3
    ItemIds(np.arange(100, 100 + N + 1)).save(out)  # the dataset's id of item i is 100 + i (the request's ids)
    # side_retrieve's other sources: a FAISS index of random item embeddings
    emb = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    index_cfg = config_for(N)
    save_index(build_index(emb, index_cfg, np.arange(1, N + 1)), out / ITEM_INDEX_FILE, index_cfg)
    np.save(out / ITEM_EMBEDDINGS_FILE, np.concatenate([np.zeros((1, 8), np.float32), emb]))
    return out


def test_top_eligible_is_best_first_filtered_and_ties_go_to_the_smaller_id():
    scores = np.array([0.5, 2.0, 2.0, -1.0, 3.0], np.float32)  # items 1..5
    eligible = np.array([False, True, True, True, True, False])  # item 5 (the best) excluded
    items, got = top_eligible(scores, eligible, 3)
    assert items.tolist() == [2, 3, 1] and got.tolist() == [2.0, 2.0, 0.5]
    items, _ = top_eligible(scores, eligible, 10)  # fewer eligible than asked: all of them, no padding
    assert items.tolist() == [2, 3, 1, 4]
    items, got = top_eligible(scores, np.zeros(6, bool), 3)
    assert items.size == 0 and got.size == 0


def test_onnx_scores_match_torch_and_a_short_history_is_left_padded(version_dir):
    served, model = OnnxSasrec(version_dir), load_checkpoint(version_dir)
    assert served.max_len == LIMITS.max_history
    hist = np.array([[0, 0, 0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]], np.int64)
    with torch.no_grad():
        expected = model(torch.from_numpy(hist)).numpy()
    np.testing.assert_allclose(served.scores(hist), expected, atol=1e-4)
    # Three events given without padding score like the same events right-aligned in the full window.
    np.testing.assert_allclose(served.scores(hist[:1, -3:]), expected[:1], atol=1e-4)


def test_the_export_takes_any_length_and_the_server_sends_only_real_columns(version_dir, monkeypatch):
    """Padding in front changes no real state, so the served scores of a batch cut to its longest history equal
    the torch model's over the full window; an all-padding batch still sends one column."""
    served, model = OnnxSasrec(version_dir), load_checkpoint(version_dir)
    assert not served.fixed_length and served.session.get_inputs()[0].shape[1] == "events"
    sent = []
    run = served.session.run
    monkeypatch.setattr(served.session, "run", lambda out, feeds: sent.append(feeds) or run(out, feeds))
    hist = np.zeros((3, LIMITS.max_history), np.int64)
    hist[0, -2:], hist[1, -3:], hist[2, -1:] = [7, 9], [1, 2, 3], [4]
    with torch.no_grad():
        expected = model(torch.from_numpy(hist)).numpy()
    np.testing.assert_allclose(served.scores(hist), expected, atol=1e-4)
    assert sent[-1]["items"].tolist() == hist[:, -3:].tolist()
    longer = np.concatenate([np.zeros((1, 4), np.int64), np.arange(1, LIMITS.max_history + 5)[None]], axis=1)
    served.scores(longer)  # more events than the window: the newest max_len
    assert sent[-1]["items"].tolist() == longer[:, -LIMITS.max_history:].tolist()
    served.scores(np.zeros((2, LIMITS.max_history), np.int64))
    assert sent[-1]["items"].shape == (2, 1)


def test_the_final_block_computes_the_newest_state_only_and_the_same_one():
    torch.manual_seed(1)
    model = SASRecModel(SASRecConfig(num_items=N, max_len=10, num_layers=3, dropout=0.0)).eval()
    hist = torch.randint(1, N + 1, (4, 10))
    hist[0, :6], hist[1, :9] = 0, 0
    with torch.no_grad():
        full = model.states(hist)
        last = model.states(hist, last_only=True)
        assert last.shape == (4, 1, model.cfg.d_model)
        torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(model(hist), model.scores(full[:, -1]), atol=1e-5, rtol=0)


def test_an_export_of_fixed_length_is_still_served_padded(tmp_path):
    """Repositories built before the export took any length: the file fixes T = max_len, the server pads."""
    torch.manual_seed(2)
    model = SASRecModel(SASRecConfig(num_items=N, max_len=6, dropout=0.0)).eval()
    example = torch.randint(1, N + 1, (2, 6))
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp_path / "sasrec.onnx"), input_names=["items"],
                          output_names=["scores"], dynamic_axes={"items": {0: "batch"}}, dynamo=False)
        expected = model(torch.tensor([[0, 0, 0, 5, 6, 7]])).numpy()
    served = OnnxSasrec(tmp_path)
    assert served.fixed_length and served.max_len == 6
    np.testing.assert_allclose(served.scores(np.array([[5, 6, 7]])), expected, atol=1e-4)


SASREC = graph.SIDE_RETRIEVE.outputs.index(graph.SASREC_ITEMS)  # its items, then its scores


def test_step_answers_each_queued_request_with_its_own_filters(version_dir):
    """side_retrieve takes the request itself (the dataset's ids) and answers internal ids, each request of a
    batch with its own filters; it hands rank the request's padded history and filters."""
    step = SideRetrieve.create(version_dir, LIMITS)
    free = dict(item_ids=np.array([104, 105, 106]), behaviors=np.ones(3, np.int32),
                timestamps=np.array([10, 20, 30]), k=np.array([5], np.int32))
    only_cat1 = dict(free, category_ids=np.array([1], np.int32))
    outputs = step(**free)
    unfiltered = outputs[graph.SASREC_ITEMS.name]
    assert outputs[graph.HIST_ITEMS.name][-3:].tolist() == [4, 5, 6] and outputs[graph.HIST_ITEMS.name][0] == 0
    assert outputs[graph.ALLOWED_CATEGORIES.name].tolist() == [0, 1, 2]
    excluded = dict(free, exclude_item_ids=np.array([100 + unfiltered[0]]))
    batch = step.run_batch([free, only_cat1, excluded])
    answers = [a[SASREC:SASREC + 2] for a in batch]
    first_source = graph.SIDE_RETRIEVE.outputs.index(graph.RECENT_ITEMS)
    for answer, allowed, dropped in zip(batch, ([0, 1, 2], [1], [0, 1, 2]), ([], [], [unfiltered[0]])):
        for items in answer[first_source::2]:  # every source's items honour the request's filters
            assert all(i % 3 in allowed and i not in dropped for i in items)
    assert answers[0][0].tolist() == unfiltered.tolist() and len(unfiltered) == LIMITS.sasrec_candidates
    assert all(i % 3 == 1 for i in answers[1][0])
    assert unfiltered[0] not in answers[2][0] and answers[2][0].tolist() == unfiltered[1:].tolist() + \
        [i for i in answers[2][0] if i not in unfiltered]
    scores = answers[0][1]
    assert np.all(np.diff(scores) <= 0)


@pytest.fixture
def rank_dir(tmp_path):
    """A rank step's folder: catalog tables, an exported ranker, a calibrator, the merge order's weight 1 (the
    answer is the merge order itself) and the priority each test writes."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ranker = Ranker(RankerConfig(num_items=N, num_leaf_categories=4, num_brands=3, num_price_buckets=2,
                                 max_history=LIMITS.max_history),
                    leaf=np.arange(N + 1) % 4, brand=np.arange(N + 1) % 3, price_bucket=np.arange(N + 1) % 2).eval()
    assert max(export_ranker(ranker, tmp_path, LIMITS.max_history, LIMITS.max_candidates).values()) < 1e-4
    IsotonicCalibrator.fit(rng.normal(size=200), rng.integers(0, 2, 200)).save(tmp_path / CALIBRATOR_FILE)
    save_top_category(tmp_path, np.arange(N + 1) % 3)
    ItemIds(np.arange(100, 100 + N + 1)).save(tmp_path)  # the dataset's id of item i is 100 + i
    write_ordering(tmp_path, 1.0, None)
    return tmp_path


def test_rank_merges_sources_in_the_build_priority_and_names_them(rank_dir):
    write_priority(rank_dir, ["sasrec", "recent", "grace", "embedding_knn"], None)
    rank = Rank.create(rank_dir, LIMITS)
    hist = np.zeros(LIMITS.max_history, np.int64)
    hist[-2:] = [4, 5]
    request = dict(hist_items=hist, hist_behaviors=np.where(hist > 0, 1, 0), grace_items=np.array([1, 2]),
                   recent_items=np.array([3, 2]), knn_items=np.array([9]), sasrec_items=np.array([2, 7]),
                   exclude_ids=np.zeros(1, np.int64), allowed_categories=np.arange(3), k=np.array([4], np.int32))
    out = rank(**request)
    cand = out[graph.CAND_ITEMS.name]
    assert cand[cand > 0].tolist() == [2, 7, 3, 1, 9] and (cand[5:] == 0).all()  # merge order, internal ids
    assert out[graph.TOP_ITEM_IDS.name].tolist() == [102, 107, 103, 101]  # weight 1: the merge order, k of it
    assert [s.decode() for s in out[graph.RETRIEVAL_SOURCE.name]] == ["sasrec", "sasrec", "recent", "grace"]
    pctr = out[graph.PCTR.name]
    assert pctr.dtype == np.float32 and ((pctr >= 0) & (pctr <= 1)).all()
    (c,) = rank.candidates([request])  # what the build's ordering stage reads: the ranker over every candidate
    assert c.items.tolist() == cand.tolist() and c.logits.shape == c.relevance.shape == cand.shape
    # filters apply to every source: category 1 only (items 1 and 7), item 7 excluded
    only = rank(**{**request, "allowed_categories": np.array([1]), "exclude_ids": np.array([0, 7])})
    assert only[graph.TOP_ITEM_IDS.name].tolist() == [101]


def test_a_priority_file_must_name_every_source_once(tmp_path):
    (tmp_path / "source_priority.json").write_text(json.dumps({"priority": ["grace", "grace", "recent"]}))
    with pytest.raises(ValueError, match="each of"):
        load_source_priority(tmp_path)


def test_sources_are_ranked_by_validation_ndcg_then_hit_rate_then_graph_order():
    rows = [{"grace": np.array([5, 1]), "recent": np.array([1]), "embedding_knn": np.array([7]),
             "sasrec": np.array([9])},
            {"grace": np.array([2]), "recent": np.array([4]), "embedding_knn": np.array([3]),
             "sasrec": np.array([3])}]
    table = score_sources(rows, np.array([1, 3]))
    assert table["recent"]["hr@10"] == 0.5 and table["grace"]["ndcg@10"] < table["recent"]["ndcg@10"]
    # knn and sasrec tie (the same hit at rank 1): graph order breaks it
    assert rank_sources(table) == ["recent", "embedding_knn", "sasrec", "grace"]
