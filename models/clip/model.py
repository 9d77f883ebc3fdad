"""CLIP (ViT image tower + causal text transformer) with OpenAI/open_clip module and parameter names.

A state_dict saved by OpenAI's `clip` or by `open_clip` (ViT models, QuickGELU or GELU) loads here with
`build_from_state_dict` / `load_checkpoint`: widths, layers, patch size, grid, context length and vocab size are
inferred from tensor shapes like OpenAI's build_model; heads are width // 64 unless given (shapes do not carry
them). encode_image / encode_text return L2-normalised embeddings; on CUDA the projection + normalisation runs
through the fused head `kernels.clip_embed.clip_head(x, proj)` when that module exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# OpenAI's image normalisation (RGB); our grayscale model uses Fashion-MNIST statistics (CLIPConfig.image_mean).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_META_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints stored in OpenAI's JIT state dicts


@dataclasses.dataclass
class CLIPConfig:
    embed_dim: int = 64
    image_resolution: int = 28
    vision_layers: int = 2
    vision_width: int = 64  # head width 64 as OpenAI's, so heads are inferable from shapes
    vision_patch_size: int = 7
    vision_heads: int = 1
    vision_mlp_width: int = 256
    context_length: int = 32
    vocab_size: int = 256
    text_width: int = 64
    text_heads: int = 1
    text_layers: int = 2
    text_mlp_width: int = 256
    quick_gelu: bool = True  # OpenAI checkpoints use QuickGELU; most open_clip ones use nn.GELU
    image_mean: tuple[float, float, float] = OPENAI_MEAN
    image_std: tuple[float, float, float] = OPENAI_STD

    def __post_init__(self):
        for name in ("vision_width", "text_width"):
            heads = getattr(self, name.replace("width", "heads"))
            if heads < 1 or getattr(self, name) % heads:
                raise ValueError(f"{name}={getattr(self, name)} must be divisible by its heads ({heads})")
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(f"image_resolution={self.image_resolution} must be a multiple of "
                             f"vision_patch_size={self.vision_patch_size}")
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CLIPConfig fields: {unknown}")
        return cls(**d)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (as OpenAI's), so fp16 checkpoints behave."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """nn.MultiheadAttention's parameter names (in_proj_weight/bias, out_proj) with an SDPA forward that exports
    to plain ONNX ops."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.attn = Attention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, mlp_width)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(mlp_width, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool, causal: bool):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, mlp_width, quick_gelu)
                                         for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D], batch first
        for block in self.resblocks:
            x = block(x, self.causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        w, p = cfg.vision_width, cfg.vision_patch_size
        self.input_resolution, self.grid = cfg.image_resolution, cfg.image_resolution // p
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        scale = w ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid ** 2 + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp_width,
                                       cfg.quick_gelu, causal=False)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled class token after ln_post, before the projection: [B, vision_width]."""
        x = self.conv1(x)
        x = x.flatten(2).transpose(1, 2)  # [B, grid^2, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.proj


def _fused_head():
    try:
        from kernels.clip_embed import clip_head  # the kernels helper's fused projection + L2 norm (CUDA)
    except ImportError:
        return None
    return clip_head


def project_normalize(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """L2-normalised x @ proj; the fused kernel on CUDA when available, torch ops otherwise (and in ONNX export)."""
    if x.is_cuda and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
        head = _fused_head()
        if head is not None:
            return head(x, proj)
    return F.normalize(x @ proj.to(x.dtype), dim=-1)


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.text_mlp_width,
                                       cfg.quick_gelu, causal=True)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self._init_parameters()

    def _init_parameters(self) -> None:  # OpenAI's initialize_parameters
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tr in (self.transformer, self.visual.transformer):
            proj_std = (tr.width ** -0.5) * ((2 * tr.layers) ** -0.5)
            attn_std, fc_std = tr.width ** -0.5, (2 * tr.width) ** -0.5
            for block in tr.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual.features(image.to(self.dtype))

    def text_features(self, text: torch.Tensor) -> torch.Tensor:
        """Pooled EOT features after ln_final, before text_projection: [B, text_width]. The EOT token has the
        largest id (OpenAI's convention, kept by clip_text tokenizers), so argmax finds it. Trailing padding
        after EOT may be cut (causal mask), so any length <= context_length is accepted."""
        n = text.shape[1]
        if n > self.config.context_length:
            raise ValueError(f"text has {n} tokens, more than context_length={self.config.context_length}")
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding[:n].to(self.dtype)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]

    def encode_image(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.image_features(image)
        return project_normalize(f, self.visual.proj) if normalize else f @ self.visual.proj

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.text_features(text)
        return project_normalize(f, self.text_projection) if normalize else f @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image [Bi, Bt], logits_per_text [Bt, Bi]) as OpenAI's CLIP.forward."""
        img, txt = self.encode_image(image), self.encode_text(text)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,R,R] pixels in [0,1] -> the model's normalised input."""
        mean = torch.tensor(self.config.image_mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std


def _count_layers(sd: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    if idx and idx != set(range(len(idx))):
        raise ValueError(f"non-contiguous layer indices under {prefix}: {sorted(idx)}")
    return len(idx)


def clean_state_dict(sd) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...}, strip 'module.' (DDP) prefixes, drop OpenAI's int metadata entries."""
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint is not a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k in _META_KEYS:
            continue
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"checkpoint entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = v
    return out


def config_from_state_dict(sd: dict[str, torch.Tensor], *, quick_gelu: bool = True,
                           vision_heads: int | None = None, text_heads: int | None = None,
                           head_width: int = 64) -> CLIPConfig:
    """Infer the architecture from tensor shapes, like OpenAI's clip.model.build_model (ViT only)."""
    if "visual.proj" not in sd:
        if any(k.startswith("visual.layer1.") for k in sd):
            raise ValueError("ModifiedResNet CLIP checkpoints (RN50...) are not supported; use a ViT checkpoint")
        raise ValueError("not a CLIP ViT state dict: 'visual.proj' missing")
    required = ["visual.conv1.weight", "visual.positional_embedding", "token_embedding.weight",
                "positional_embedding", "text_projection", "ln_final.weight",
                "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"]
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"not a CLIP ViT state dict: missing {missing}")
    conv = sd["visual.conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3:
        raise ValueError(f"visual.conv1.weight must be [width, 3, p, p], got {tuple(conv.shape)}")
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise ValueError(f"visual.positional_embedding has {sd['visual.positional_embedding'].shape[0]} rows, "
                         "not a square grid + 1")
    text_width = sd["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_layers=_count_layers(sd, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=patch,
        vision_heads=vision_heads or max(1, vision_width // head_width),
        vision_mlp_width=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_heads=text_heads or max(1, text_width // head_width),
        text_layers=_count_layers(sd, "transformer.resblocks."),
        text_mlp_width=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        quick_gelu=quick_gelu,
    )


def build_from_state_dict(sd, *, config: CLIPConfig | None = None, quick_gelu: bool = True,
                          vision_heads: int | None = None, text_heads: int | None = None) -> CLIP:
    """A float32 CLIP in eval mode holding exactly the checkpoint's tensors (strict: every key must match)."""
    sd = clean_state_dict(sd)
    cfg = config or config_from_state_dict(sd, quick_gelu=quick_gelu, vision_heads=vision_heads,
                                           text_heads=text_heads)
    model = CLIP(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the CLIP architecture: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
           if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError("checkpoint shapes do not match the inferred architecture: " + "; ".join(bad[:8]))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


def read_state_dict(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"CLIP checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError("reading .safetensors checkpoints needs the 'safetensors' package") from e
        return load_file(str(p), device="cpu")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except RuntimeError as e:
        if "TorchScript" not in str(e) and "torch.jit" not in str(e):
            raise
    # OpenAI's released .pt files are TorchScript archives; their state_dict has the same names.
    return torch.jit.load(str(p), map_location="cpu").state_dict()


def load_checkpoint(path: str | os.PathLike, **kwargs) -> CLIP:
    """Load an OpenAI/open_clip ViT checkpoint (.pt state dict, {'state_dict': ...}, 'module.' prefixes,
    TorchScript .pt, or .safetensors). kwargs go to build_from_state_dict (quick_gelu, *_heads, config)."""
    return build_from_state_dict(read_state_dict(path), **kwargs)


# --- trained model directories (written by models.clip.train) --------------------------------------------
MODEL_FILE, CONFIG_FILE, VOCAB_FILE = "clip.pt", "clip_config.json", "vocab.json"


def save_model_dir(model: CLIP, tokenizer, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / MODEL_FILE)
    (out / CONFIG_FILE).write_text(json.dumps({"config": model.config.to_dict(), **(extra or {})}, indent=2))
    tokenizer.save(out / VOCAB_FILE)
    return out


class ClipEmbedder:
    """A trained model directory: embed item/creative images and texts into the shared normalised space."""

    def __init__(self, model: CLIP, tokenizer, batch_size: int = 512):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, model vocab_size is "
                             f"{model.config.vocab_size}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @classmethod
    def load(cls, model_dir: str | os.PathLike, **kwargs) -> "ClipEmbedder":
        from serving.clip.text import WordTokenizer
        d = Path(model_dir)
        if not (d / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{d} is not a CLIP model dir ({CONFIG_FILE} missing); train one with "
                                    "`python -m models.clip.train --data DATASET_DIR --out DIR`")
        cfg = CLIPConfig.from_dict(json.loads((d / CONFIG_FILE).read_text())["config"])
        model = build_from_state_dict(read_state_dict(d / MODEL_FILE), config=cfg)
        return cls(model, WordTokenizer.load(d / VOCAB_FILE), **kwargs)

    @property
    def dim(self) -> int:
        return self.model.config.embed_dim

    @torch.no_grad()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W] grayscale or [N,H,W,3] -> float32 [N, dim], L2-normalised."""
        from serving.clip.text import image_pixels
        px = image_pixels(images, self.model.config.image_resolution)
        out = [self.model.encode_image(self.model.normalize_pixels(torch.from_numpy(px[i:i + self.batch_size])))
               for i in range(0, len(px), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """list of N strings -> float32 [N, dim], L2-normalised."""
        ids = self.tokenizer(list(texts), self.model.config.context_length)
        out = [self.model.encode_text(torch.from_numpy(ids[i:i + self.batch_size]))
               for i in range(0, len(ids), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def embed_creatives(self, images: np.ndarray | None = None, texts: list[str] | None = None) -> np.ndarray:
        """Image and/or text of each creative -> one normalised embedding (mean of the two, renormalised)."""
        if images is None and texts is None:
            raise ValueError("embed_creatives needs images, texts or both")
        parts = []
        if images is not None:
            parts.append(self.embed_images(images))
        if texts is not None:
            parts.append(self.embed_texts(texts))
        if len(parts) == 2 and len(parts[0]) != len(parts[1]):
            raise ValueError(f"{len(parts[0])} images but {len(parts[1])} texts")
        e = np.mean(parts, axis=0)
        return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def embed_rows(embedder: ClipEmbedder, images: np.ndarray | None, has_image: np.ndarray | None,
               texts: list[str]) -> np.ndarray:
    """One embedding per row: the normalised mean of its image and text embeddings where has_image, its text
    embedding alone otherwise (what the served clip_embed step returns for image+text / text-only requests).
    images: uint8 [n, R, R] (rows without an image are ignored); returns float32 [n, D] unit rows."""
    out = embedder.embed_texts(list(texts)).astype(np.float32)
    if has_image is None or images is None:
        return out
    has_image = np.asarray(has_image, bool)
    if len(has_image) != len(out) or len(images) != len(out):
        raise ValueError(f"{len(images)} images, {len(has_image)} has_image flags and {len(out)} texts differ")
    if has_image.any():
        both = embedder.embed_images(images[has_image]) + out[has_image]
        out[has_image] = both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    return out


def embed_items(embedder: ClipEmbedder, data, images: tuple[np.ndarray, np.ndarray] | None = None
                ) -> np.ndarray:
    """The catalog of `data` (data.build_data.BuildData) -> float32 [N, D] unit vectors, row k-1 = internal
    item k: image+text (normalised mean) for items with an image, the text (catalog.texts: title, category
    path, brand) alone otherwise. `images`: data.images.load_catalog_images(catalog) when already loaded."""
    from data.images import load_catalog_images
    cat = data.catalog
    pixels, has = images if images is not None else load_catalog_images(cat, embedder.model.config.image_resolution)
    return embed_rows(embedder, pixels[1:], has[1:], cat.texts[1:])


def embed_images(model_dir: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    return ClipEmbedder.load(model_dir).embed_images(images)


def embed_texts(model_dir: str | os.PathLike, texts: list[str]) -> np.ndarray:
    return ClipEmbedder.load(model_dir).embed_texts(texts)
