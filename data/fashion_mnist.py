"""Fashion-MNIST reader (numpy only; no torchvision).

Debian's `dataset-fashion-mnist` package installs the original IDX files (gzip) under
/usr/share/datasets/fashion-mnist/: 60k train and 10k test (t10k) 28x28 grayscale product images in 10 classes.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
# Official label names, in label order.
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
# The noun a shopper would type; used in prompts ("a photo of a {}") and in catalog leaf names.
CLASS_PROMPT_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"]
NUM_CLASSES = 10
IMAGE_SIZE = 28
_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
_IDX_DTYPES = {0x08: np.uint8}


def data_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: IDX dtype 0x{dtype_code:02x} not supported (only unsigned byte 0x08)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but {len(raw) - offset} bytes follow")
    return np.frombuffer(raw, _IDX_DTYPES[dtype_code], offset=offset).reshape(dims).copy()


def load(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of split 'train' (60k) or 'test'/'t10k' (10k)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    d = data_dir(root)
    prefix = _SPLITS[split]
    img_path, lab_path = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (img_path, lab_path) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install the Debian package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or set ${ENV_VAR} to a folder "
            f"holding {prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz.")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{d}: images {images.shape} and labels {labels.shape} do not match")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(f"{lab_path}: label {int(labels.max())} >= {NUM_CLASSES}")
    return images, labels.astype(np.int64)
