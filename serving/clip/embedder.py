"""CLIP embeddings on the serving side: the exported ONNX towers in ONNX Runtime plus the numpy tokenizer,
no torch. `clip_embed` serves it; exporters.clip_export writes the folder it reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.clip.text import image_pixels, load_tokenizer
from serving.ort import session

IMAGE_FILE, TEXT_FILE, MANIFEST_FILE = "clip_image.onnx", "clip_text.onnx", "clip_onnx.json"


class OnnxClipEmbedder:
    """Serving-side embedder over an exported folder: ONNX Runtime + numpy tokenizer, no torch."""

    def __init__(self, onnx_dir: str | Path, threads: int = 1):
        d = Path(onnx_dir)
        if not (d / MANIFEST_FILE).exists():
            raise FileNotFoundError(f"{d / MANIFEST_FILE} missing; run `python -m exporters.clip_export`")
        self.manifest = json.loads((d / MANIFEST_FILE).read_text())
        if "tokenizer" not in self.manifest:
            raise ValueError(f"{d / MANIFEST_FILE} names no tokenizer file")
        self.tokenizer = load_tokenizer(d / self.manifest["tokenizer"], self.manifest["context_length"])
        self.image_session = session(d / self.manifest["image"], threads)
        self.text_session = session(d / self.manifest["text"], threads)

    @property
    def dim(self) -> int:
        return int(self.manifest["embed_dim"])

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        px = image_pixels(images, self.manifest["image_resolution"])
        if len(px) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.image_session.run(None, {"pixels": px})[0]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenizer(list(texts), self.manifest["context_length"])
        n = max(int((ids != 0).sum(1).max()), 2)  # padding after EOT cannot change a causal model's EOT output
        return self.text_session.run(None, {"input_ids": np.ascontiguousarray(ids[:, :n])})[0]
