"""Tiny simulator datasets for the ads tests: data.simulator.write_dataset (the dataset contract) with a fake
Fashion-MNIST train split, read back with data.build_data.load_build_data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from data.build_data import BuildData, load_build_data
from data.campaigns import CampaignSet
from data.simulator import SimConfig, simulate, write_dataset

DEFAULT_IMPRESSIONS = (150, 80, 80)


def fake_fashion_mnist(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for the Fashion-MNIST train split: every class has images."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n, dtype=np.int64) % 10


def _world(seed: int, num_items: int, num_users: int, num_campaigns: int):
    return simulate(SimConfig(seed=seed, num_items=num_items, num_users=num_users, num_campaigns=num_campaigns))


def write_sim_dataset(directory: Path, seed: int, num_items: int = 300, num_users: int = 200,
                      num_campaigns: int = 40, impressions: tuple[int, int, int] = DEFAULT_IMPRESSIONS,
                      all_warm: bool = False) -> Path:
    """A simulator world written as a dataset; `impressions` per campaign (the simulator's own split; the ads
    models split the log by time). The simulator's cold-start campaigns launch late (write_dataset), so a time
    split finds them cold; `all_warm` writes every campaign as warm instead (its whole log, no late launch)."""
    world = _world(seed, num_items, num_users, num_campaigns)
    with pytest.MonkeyPatch.context() as mp:
        if all_warm:
            import data.campaigns

            build = data.campaigns.build_campaigns

            def build_all_warm(*args, **kwargs) -> CampaignSet:
                cs = build(*args, **kwargs)
                return dataclasses.replace(cs, warm=np.ones_like(cs.warm))

            mp.setattr(data.campaigns, "build_campaigns", build_all_warm)  # write_dataset imports it when called
        write_dataset(world, directory, seed=seed, train_images=fake_fashion_mnist(), campaign_impressions=impressions)
    return directory


def sim_campaigns(seed: int, num_items: int = 300, num_users: int = 200, num_campaigns: int = 40,
                  impressions: tuple[int, int, int] = DEFAULT_IMPRESSIONS) -> CampaignSet:
    """The simulator's campaigns (with its warm flags and full ad log) that write_sim_dataset writes; campaign c
    is the dataset's campaign id c."""
    from data.campaigns import build_campaigns

    return build_campaigns(_world(seed, num_items, num_users, num_campaigns), seed=seed, impressions=impressions)


def sim_data(tmp_path_factory, seed: int, **kwargs) -> BuildData:
    name = f"ads-sim{seed}" + ("-all-warm" if kwargs.get("all_warm") else "")
    out = tmp_path_factory.mktemp(name) / "dataset"
    return load_build_data(write_sim_dataset(out, seed, **kwargs))
