"""Export the CLIP towers to ONNX and embed with ONNX Runtime (the serving path, torch-free at run time).

Two graphs, each a full tower INCLUDING its projection and L2 normalisation:
  clip_image.onnx: pixels float32 [B, 3, R, R] in [0, 1] -> embedding float32 [B, D]   (mean/std inside)
  clip_text.onnx:  input_ids int64 [B, L<=context_length] -> embedding float32 [B, D]
Why not a separate projection-head graph: the head is one [W, D] matmul + normalisation, so a third ORT
session would add a python-backend hop per request for no reuse (image and text heads have different weights).
On CUDA the torch model runs the same head through kernels.clip_embed.clip_head (models/clip.project_normalize);
the ONNX graphs always carry plain ops, so ORT/TensorRT fuse them on their own.

CLI: python -m exporters.clip_export --model-dir DIR --out DIR   (prints the ORT-vs-torch max |diff|)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from serving.clip.embedder import IMAGE_FILE, MANIFEST_FILE, TEXT_FILE
from serving.clip.text import image_pixels, load_tokenizer

OPSET = 17
PARITY_TOLERANCE = 1e-4


def _towers(model):
    import torch
    from torch import nn

    class ImageTower(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixels):
            return self.m.encode_image(self.m.normalize_pixels(pixels))

    class TextTower(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m.encode_text(input_ids)

    return ImageTower(model).eval(), TextTower(model).eval(), torch


def export_clip(model, out_dir: str | Path, tokenizer_file: str | Path | None = None, seed: int = 0
                ) -> dict[str, float]:
    """Write clip_image.onnx, clip_text.onnx, clip_onnx.json (+ vocab.json copied) into out_dir; return the max
    |ORT - torch| per graph, measured on batch sizes and lengths other than the traced ones."""
    image, text, torch = _towers(model.cpu().eval())
    cfg = model.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    r, ctx = cfg.image_resolution, cfg.context_length
    with torch.no_grad():
        torch.onnx.export(image, (torch.rand(2, 3, r, r),), str(out / IMAGE_FILE), input_names=["pixels"],
                          output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})
        torch.onnx.export(text, (torch.from_numpy(_random_ids(rng, 2, ctx, cfg.vocab_size)),), str(out / TEXT_FILE),
                          input_names=["input_ids"], output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}})
    manifest = {"image": IMAGE_FILE, "text": TEXT_FILE, "embed_dim": cfg.embed_dim, "image_resolution": r,
                "context_length": ctx, "vocab_size": cfg.vocab_size, "opset": OPSET}
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, out / Path(tokenizer_file).name)
        manifest["tokenizer"] = Path(tokenizer_file).name
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return parity(model, out, seed=seed + 1)


def _random_ids(rng: np.random.Generator, b: int, n: int, vocab: int) -> np.ndarray:
    """Token rows as tokenizers make them: SOT, words, EOT (the largest id), then padding."""
    ids = np.zeros((b, n), np.int64)
    for i in range(b):
        k = int(rng.integers(2, n + 1))
        ids[i, 0] = vocab - 2
        ids[i, 1:k - 1] = rng.integers(2, vocab - 2, size=k - 2)
        ids[i, k - 1] = vocab - 1
    return ids


def parity(model, out_dir: str | Path, seed: int = 1) -> dict[str, float]:
    from serving.ort import session
    image, text, torch = _towers(model.cpu().eval())
    cfg, out = model.config, Path(out_dir)
    rng = np.random.default_rng(seed)
    diffs = {}
    img_sess, txt_sess = session(out / IMAGE_FILE), session(out / TEXT_FILE)
    for b in (1, 5):
        px = rng.random((b, 3, cfg.image_resolution, cfg.image_resolution), dtype=np.float32)
        with torch.no_grad():
            want = image(torch.from_numpy(px)).numpy()
        got = img_sess.run(None, {"pixels": px})[0]
        diffs[IMAGE_FILE] = max(diffs.get(IMAGE_FILE, 0.0), float(np.abs(got - want).max()))
        for n in (cfg.context_length, max(2, cfg.context_length // 2)):
            ids = _random_ids(rng, b, n, cfg.vocab_size)
            with torch.no_grad():
                want = text(torch.from_numpy(ids)).numpy()
            got = txt_sess.run(None, {"input_ids": ids})[0]
            diffs[TEXT_FILE] = max(diffs.get(TEXT_FILE, 0.0), float(np.abs(got - want).max()))
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description="Export a trained CLIP model dir to ONNX and check ORT parity.")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    from models.clip.model import VOCAB_FILE, ClipEmbedder
    emb = ClipEmbedder.load(a.model_dir)
    diffs = export_clip(emb.model, a.out, a.model_dir / VOCAB_FILE)
    print(json.dumps(diffs, indent=2))
    worst = max(diffs.values())
    if worst > PARITY_TOLERANCE:
        raise SystemExit(f"ORT parity {worst:.2e} > {PARITY_TOLERANCE}")


if __name__ == "__main__":
    main()
