"""The ranker's target attention window (RankerConfig.attention_window)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from models.ranking.model import Ranker, RankerConfig

CFG = RankerConfig(num_items=40, num_leaf_categories=5, num_brands=4, num_price_buckets=3, d_model=8, hidden=16,
                   max_history=20, attention_window=6)


def _pair(cfg: RankerConfig = CFG) -> tuple[Ranker, Ranker]:
    """The same weights with the window and without it."""
    rng = np.random.default_rng(0)
    tables = [rng.integers(0, k, cfg.num_items + 1) for k in (5, 4, 3)]
    torch.manual_seed(0)
    windowed = Ranker(cfg, *tables).eval()
    whole = Ranker(dataclasses.replace(cfg, attention_window=0), *tables).eval()
    whole.load_state_dict(windowed.state_dict())
    return windowed, whole


def _inputs(width: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, CFG.num_items + 1, (3, width), generator=g)
    hist[1, : width // 2] = 0  # right-aligned, padding in front
    return hist, (hist > 0).long() * 2, torch.randint(1, CFG.num_items + 1, (3, 7), generator=g)


def test_histories_within_the_window_score_as_without_it():
    windowed, whole = _pair()
    with torch.no_grad():
        for width in (1, 4, CFG.attention_window):
            for a, b in zip(windowed(*_inputs(width)), whole(*_inputs(width))):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_attention_reads_only_the_newest_events(monkeypatch):
    windowed, whole = _pair()
    widths = []
    original = Ranker.target_attention_logits

    def spy(self, hist, cand):
        widths.append(hist.shape[1])
        return original(self, hist, cand)

    monkeypatch.setattr(Ranker, "target_attention_logits", spy)
    with torch.no_grad():
        got = windowed(*_inputs(CFG.max_history))[0]
        want = whole(*_inputs(CFG.max_history))[0]
    assert widths == [CFG.attention_window, CFG.max_history]
    assert not torch.allclose(got, want)  # older events no longer weigh in the attention
