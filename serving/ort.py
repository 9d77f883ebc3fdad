"""ONNX Runtime sessions for the served steps (CPU)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session; one intra-op thread because Triton runs several models side by side on
    few cores."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
