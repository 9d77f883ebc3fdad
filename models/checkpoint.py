"""The torch checkpoint every served model family writes beside its ONNX export (the in-process reference loads
it): the model's config dataclass as a dict and its state dict, in one file of the step's version folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def save(model: nn.Module, path: Path) -> None:
    """`model.cfg` must be a dataclass."""
    torch.save({"config": dataclasses.asdict(model.cfg), "state": model.state_dict()}, path)


def load(path: Path, build: Callable[[dict], nn.Module]) -> nn.Module:
    """`build(config dict)` makes the untrained model; the saved state goes into it; returned in eval mode."""
    ckpt = torch.load(path, map_location="cpu")
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["state"])
    return model.eval()
