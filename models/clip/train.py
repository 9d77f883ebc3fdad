"""Train the default CLIP contrastively on a dataset's own items (data.build_data.BuildData).

Data: every catalog item has a text (catalog.texts: title, category path and brand) and optionally an image
(loaded by data.images: grayscale 28x28, aspect kept by padding). Internal items are split once, seeded, into
training and validation items (cfg.val_fraction; no validation when that leaves fewer than 2 items).

Vocabulary: word-level (serving.clip.text.WordTokenizer) built from ALL item texts and campaign copy of the
dataset (the build embeds every item and creative; words seen only in validation items keep their initial
embedding). The context length is the longest of those texts in tokens, at least 32 and at most
cfg.max_context_length (longer texts are cut, keeping EOT; metrics count them).

Text views (augmentation): per item and step the item's "caption" is drawn from caption_mix over
(full text, title, category path + brand). Two objectives, summed:
- image-text (items with an image): symmetric InfoNCE between the batch's images and captions. Captions of
  the batch's text-only items are extra negatives for the image->text direction only (they have no image).
- text-text (every item, weight cfg.text_weight): symmetric InfoNCE between the caption and the item's full
  text (the text the build embeds). This is the only objective when no item has an image: the image tower is
  then exported as initialised (random) and metrics["image_tower"] says so; every item is embedded by text.
Targets are soft: (1 - category_weight) of each row's mass goes to its exact positives (itself, and batch
entries with an identical caption, full text or image, which score identically), category_weight is spread
over the batch entries of its leaf category (a shop's catalogue has many near-duplicates per category, which
plain CLIP would push apart as negatives). category_weight=0 is the plain CLIP loss.
Images get a random horizontal flip and a +-2 px shift (edge-replicated) when cfg.augment.

Validation (held-out items, never trained on), after each epoch: the same loss without augmentation, images
paired with full texts and titles as the text-text queries (early stopping with cfg.patience; the best epoch's
weights are kept). At the end, retrieval over
the validation items: image->text (query: an item's image; gallery: every validation item's full text) and
text->image (query: full text; gallery: validation items' images), recall@1/@10 of the exact item, and the
"category" variants (a hit when a top-k item shares the query's leaf category); title->text recall (query: an
item's title alone; gallery: full texts) for every dataset.

CLI: python -m models.clip.train --data DATASET_DIR --out DIR   (writes clip.pt, clip_config.json, vocab.json,
metrics.json)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.images import load_catalog_images
from models.clip.model import CLIP, CLIPConfig, embed_items, save_model_dir  # noqa: F401 (embed_items: the build's)
from serving.clip.text import WordTokenizer, image_pixels

VIEWS = ("text", "title", "category")  # caption_mix order
MIN_CONTEXT = 32  # the served text tower accepts at least this many tokens, whatever the dataset
NO_IMAGE_MEAN, NO_IMAGE_STD = 0.5, 0.5  # image normalisation when the dataset has no image to measure


@dataclasses.dataclass
class TrainConfig:
    seed: int = 0
    # Sized for ~2 min on 1 core for 1,500 items (see the module docstring and the metrics' train_seconds).
    epochs: int = 40  # cap; early stopping on the validation loss usually ends sooner
    patience: int = 4  # epochs without a validation-loss improvement before stopping
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 20  # steps
    val_fraction: float = 0.1
    category_weight: float = 0.5  # share of each contrastive target on same-leaf-category items (0 = plain CLIP)
    text_weight: float = 1.0  # weight of the caption <-> full-text loss (always on; the only one without images)
    caption_mix: tuple = (0.5, 0.25, 0.25)  # per item and step: full text, title, category path + brand
    augment: bool = True  # random flip and +-2 px shift of training images
    max_context_length: int = 77
    threads: int = 2

    def __post_init__(self):
        for name in ("epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.category_weight < 1.0:
            raise ValueError(f"category_weight must be in [0, 1), got {self.category_weight}")
        if self.text_weight < 0:
            raise ValueError(f"text_weight must be >= 0, got {self.text_weight}")
        mix = tuple(float(p) for p in self.caption_mix)
        if len(mix) != len(VIEWS) or min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(f"caption_mix must be {len(VIEWS)} non-negative weights {VIEWS} with a positive sum, "
                             f"got {self.caption_mix}")
        self.caption_mix = mix
        if self.max_context_length < MIN_CONTEXT:
            raise ValueError(f"max_context_length must be >= {MIN_CONTEXT}, got {self.max_context_length}")


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Symmetric InfoNCE over a [B, B] image x text logit matrix. labels=None: the diagonal is the only
    positive; else every (i, j) with labels[i] == labels[j] is a positive (targets spread evenly)."""
    b = logits.shape[0]
    if labels is None:
        target = torch.arange(b, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = (labels[:, None] == labels[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.t(), target.t()))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the cross-entropy between softmax(logits row) and a target distribution per row."""
    return torch.sum(-target * F.log_softmax(logits, 1), 1).mean()


def soft_targets(exact: torch.Tensor, same_category: torch.Tensor, category_weight: float) -> torch.Tensor:
    """Row distributions from boolean [R, C] relations: (1 - w) spread over the exact positives, w over the
    same-category entries (rows without any same-category entry put all their mass on the exact ones)."""
    e = exact.float()
    t = e / e.sum(1, keepdim=True).clamp_min(1.0)
    if category_weight > 0:
        c = same_category.float()
        n = c.sum(1, keepdim=True)
        w = category_weight * (n > 0).float()
        t = (1 - w) * t + w * c / n.clamp_min(1.0)
    return t


# --- the dataset's items as training arrays ----------------------------------------------------------------
@dataclasses.dataclass
class ItemSet:
    """Per internal item (row 0 = padding): its three text views, leaf category, image and duplicate keys."""

    views: dict[str, list[str]]  # VIEWS -> [N+1] strings
    leaf: np.ndarray  # int64 [N+1]
    images: np.ndarray  # uint8 [N+1, R, R]
    has_image: np.ndarray  # bool [N+1]
    image_key: np.ndarray  # int64 [N+1]: equal keys = identical pixels (-1 without an image)
    text_key: np.ndarray  # int64 [N+1]: equal keys = identical full text

    @classmethod
    def from_build_data(cls, data, resolution: int) -> "ItemSet":
        cat = data.catalog
        brands = [cat.brand_names[b] for b in cat.brand]
        category = [" ".join(p for p in (path, brand) if p) for path, brand in zip(cat.category_paths, brands)]
        images, has = load_catalog_images(cat, resolution)
        image_key = np.full(len(images), -1, np.int64)
        if has.any():
            _, inverse = np.unique(images[has].reshape(int(has.sum()), -1), axis=0, return_inverse=True)
            image_key[has] = inverse.reshape(-1)
        _, text_key = np.unique(np.array(cat.texts, dtype=object).astype(str), return_inverse=True)
        return cls(views={"text": list(cat.texts), "title": list(cat.titles), "category": category},
                   leaf=np.asarray(cat.leaf_category, np.int64), images=images, has_image=has,
                   image_key=image_key, text_key=text_key.reshape(-1).astype(np.int64))


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """Drop all-padding trailing columns: with the causal mask they cannot change the EOT output."""
    n = int((ids != 0).sum(1).max()) if len(ids) else 1
    return ids[:, :max(n, 1)]


def _pixels(model: CLIP, images: np.ndarray) -> torch.Tensor:
    return model.normalize_pixels(torch.from_numpy(image_pixels(images, model.config.image_resolution)))


def _augment(images: np.ndarray, rng: np.random.Generator, shift: int = 2) -> np.ndarray:
    """Random horizontal flip (p=0.5) and a random shift of up to `shift` px (edges replicated)."""
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)), mode="edge")
    dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)]) if n else images.copy()
    flip = rng.random(n) < 0.5
    out[flip] = out[flip][:, :, ::-1]
    return out


def _encode_texts(model: CLIP, tok: WordTokenizer, texts: list[str]) -> torch.Tensor:
    return model.encode_text(_trim(torch.from_numpy(tok(texts, model.config.context_length))))


def _same_text(texts: list[str]) -> torch.Tensor:
    key = torch.from_numpy(np.unique(np.array(texts, dtype=object).astype(str), return_inverse=True)[1].reshape(-1))
    return key[:, None] == key[None, :]


def batch_loss(model: CLIP, tok: WordTokenizer, items: ItemSet, batch: np.ndarray, captions: list[str],
               cfg: TrainConfig, images: np.ndarray | None = None, queries: list[str] | None = None
               ) -> tuple[torch.Tensor, dict]:
    """The training objective on one batch of internal item ids with their captions (paired with the images).
    `images`: the pixels of the batch's items that have an image (augmented ones in training); default their
    stored images. `queries`: the text side of the text-text loss (default: the captions)."""
    scale = model.logit_scale.exp()
    cap = _encode_texts(model, tok, captions)
    leaf = torch.from_numpy(items.leaf[batch])
    same_leaf = leaf[:, None] == leaf[None, :]
    text_key = torch.from_numpy(items.text_key[batch])
    same_caption = _same_text(captions)
    parts, total = {}, torch.zeros(())
    with_image = items.has_image[batch]
    if with_image.any():
        rows = np.flatnonzero(with_image)
        px = items.images[batch[rows]] if images is None else images
        img = model.encode_image(_pixels(model, px))
        logits = scale * img @ cap.t()  # [R images, B captions]
        image_key = torch.from_numpy(items.image_key[batch])
        r = torch.from_numpy(rows)
        exact = (same_caption | (text_key[:, None] == text_key[None, :]))[r]
        exact = exact | ((image_key[r][:, None] == image_key[None, :]) & (image_key[None, :] >= 0))
        exact[torch.arange(len(rows)), r] = True
        target = soft_targets(exact, same_leaf[r], cfg.category_weight)
        i2t = soft_cross_entropy(logits, target)
        # text -> image: only captions of items with an image, over the batch's images
        t_target = soft_targets(exact[:, r].t(), same_leaf[r][:, r].t(), cfg.category_weight)
        t2i = soft_cross_entropy(logits[:, r].t(), t_target)
        parts["image_text"] = 0.5 * (i2t + t2i)
        total = total + parts["image_text"]
    if cfg.text_weight > 0:
        if queries is None:
            query, same_query = cap, same_caption
        else:
            query, same_query = _encode_texts(model, tok, queries), _same_text(queries)
        full = _encode_texts(model, tok, [items.views["text"][i] for i in batch])
        logits = scale * query @ full.t()  # [B queries, B full texts]
        exact = same_query | (text_key[:, None] == text_key[None, :])
        exact.fill_diagonal_(True)
        target = soft_targets(exact, same_leaf, cfg.category_weight)
        parts["text_text"] = 0.5 * (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.t(), target.t()))
        total = total + cfg.text_weight * parts["text_text"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def validation_loss(model: CLIP, tok: WordTokenizer, items: ItemSet, val: np.ndarray, cfg: TrainConfig) -> float:
    """The objective on held-out items, in batches of cfg.batch_size, without augmentation: images paired with
    their full texts, and titles as the text-text queries (a full text against itself would be trivial)."""
    model.eval()
    chunks = np.array_split(val, max(1, math.ceil(len(val) / cfg.batch_size)))
    losses = [batch_loss(model, tok, items, c, [items.views["text"][i] for i in c], cfg,
                         queries=[items.views["title"][i] for i in c])[0] for c in chunks]
    weights = [len(c) for c in chunks]
    return float(sum(float(loss) * w for loss, w in zip(losses, weights)) / max(1, sum(weights)))


@torch.no_grad()
def _encode_all(fn, inputs, batch: int = 512) -> torch.Tensor:
    return torch.cat([fn(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


@torch.no_grad()
def _recall(sims: torch.Tensor, truth: np.ndarray, query_leaf: np.ndarray, gallery_leaf: np.ndarray,
            prefix: str, ks=(1, 10)) -> dict:
    """sims [Q, G]; truth[q] = gallery column of q's own item (-1 if absent)."""
    k_max = min(max(ks), sims.shape[1])
    top = sims.topk(k_max, dim=1).indices.numpy()
    out = {}
    for k in ks:
        kk = min(k, k_max)
        out[f"{prefix}_recall@{k}"] = float(np.mean((top[:, :kk] == truth[:, None]).any(1)))
        out[f"{prefix}_category_recall@{k}"] = float(np.mean((gallery_leaf[top[:, :kk]] == query_leaf[:, None]).any(1)))
    return out


@torch.no_grad()
def retrieval_metrics(model: CLIP, tok: WordTokenizer, items: ItemSet, ids: np.ndarray) -> dict:
    """Retrieval among the items `ids` (internal ids): see the module docstring."""
    model.eval()
    ids = np.asarray(ids, np.int64)
    texts = _encode_all(lambda t: _encode_texts(model, tok, t), [items.views["text"][i] for i in ids])
    titles = _encode_all(lambda t: _encode_texts(model, tok, t), [items.views["title"][i] for i in ids])
    leaf = items.leaf[ids]
    out = {"gallery_items": int(len(ids)), "chance_recall@10": round(min(1.0, 10 / max(1, len(ids))), 4)}
    out.update(_recall(titles @ texts.t(), np.arange(len(ids)), leaf, leaf, "title2text"))
    img_rows = np.flatnonzero(items.has_image[ids])
    out["queries_with_image"] = int(len(img_rows))
    if len(img_rows):
        img = _encode_all(lambda x: model.encode_image(_pixels(model, x)), items.images[ids[img_rows]])
        out.update(_recall(img @ texts.t(), img_rows, leaf[img_rows], leaf, "i2t"))
        out.update(_recall(texts[img_rows] @ img.t(), np.arange(len(img_rows)), leaf[img_rows], leaf[img_rows],
                           "t2i"))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def split_items(num_items: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) internal item ids, seeded; no validation when it would leave < 2 items on a side."""
    perm = np.random.default_rng([cfg.seed, 17]).permutation(np.arange(1, num_items + 1))
    n_val = int(round(cfg.val_fraction * num_items))
    if n_val < 2 or num_items - n_val < 2:
        n_val = 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def build_tokenizer(data, max_context_length: int) -> tuple[WordTokenizer, int]:
    """(tokenizer over every item text and campaign copy, number of those texts longer than its context)."""
    texts = [t for t in data.catalog.texts[1:]]
    if data.campaigns is not None:
        texts += list(data.campaigns.text)
    tok = WordTokenizer.build(texts)
    lengths = np.array([len(tok.encode(t)) for t in texts]) if texts else np.zeros(1, int)
    tok.context_length = int(min(max_context_length, max(MIN_CONTEXT, int(lengths.max()))))
    return tok, int((lengths > tok.context_length).sum())


def train_on_items(out: str | Path, cfg: TrainConfig, data, mcfg: CLIPConfig | None = None, log=None) -> dict:
    """Train on `data` (a data.build_data.BuildData), write the model dir `out` (clip.pt, clip_config.json,
    vocab.json, metrics.json) and return the metrics. `mcfg`: architecture overrides (vocab_size,
    context_length and the image normalisation always come from the data)."""
    from data.build_data import BuildData
    if not isinstance(data, BuildData):
        raise TypeError(f"train_on_items needs a data.build_data.BuildData (load_build_data(DIR)), got "
                        f"{type(data).__name__}; the simulator is a dataset now (python -m data.simulator)")
    log = log or (lambda msg: print(msg, flush=True))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(Path(out), cfg, data, mcfg, log)
    finally:
        torch.set_num_threads(threads_before)


train = train_on_items  # the one training entry point: train(out, cfg, data)


def _train(out: Path, cfg: TrainConfig, data, mcfg: CLIPConfig | None, log) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    base = mcfg or CLIPConfig()
    items = ItemSet.from_build_data(data, base.image_resolution)
    tok, truncated = build_tokenizer(data, cfg.max_context_length)
    train_ids, val_ids = split_items(data.num_items, cfg)
    train_img = train_ids[items.has_image[train_ids]]
    if len(train_img):
        px = items.images[train_img].astype(np.float64) / 255.0
        mean, std = float(px.mean()), float(max(px.std(), 1e-3))
    else:
        mean, std = NO_IMAGE_MEAN, NO_IMAGE_STD
    mcfg = dataclasses.replace(base, vocab_size=tok.vocab_size, context_length=tok.context_length,
                               image_mean=(mean,) * 3, image_std=(std,) * 3)
    model = CLIP(mcfg)
    n_img = int(items.has_image[1:].sum())
    if len(train_img):
        tower = f"trained on {len(train_img)} image-text pairs"
    elif n_img:
        tower = f"untrained: none of the {n_img} items with an image is a training item"
    else:
        tower = "untrained: no item has an image (text-only dataset); items are embedded by text alone"
    log(f"clip: {data.num_items} items ({n_img} with an image), {len(train_ids)} train / {len(val_ids)} "
        f"validation, vocab {tok.vocab_size}, context {tok.context_length}; image tower {tower}")
    if not len(train_img) and cfg.text_weight <= 0:
        log("clip: no image-text pairs and text_weight=0: nothing to train")

    before = retrieval_metrics(model, tok, items, val_ids) if len(val_ids) else None
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    n_batches = max(1, math.ceil(len(train_ids) / cfg.batch_size))
    total_steps = cfg.epochs * n_batches
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (
        1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    mix = np.array(cfg.caption_mix) / sum(cfg.caption_mix)
    trainable = len(train_img) > 0 or cfg.text_weight > 0
    history, best, best_state, best_epoch, waited = [], math.inf, None, 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(1, cfg.epochs + 1 if trainable else 1):
        model.train()
        order = rng.permutation(train_ids)
        sums = {}
        for batch in np.array_split(order, n_batches):
            view = rng.choice(len(VIEWS), size=len(batch), p=mix)
            captions = [items.views[VIEWS[v]][i] for v, i in zip(view, batch)]
            with_image = batch[items.has_image[batch]]
            images = None
            if len(with_image):
                images = items.images[with_image]
                images = _augment(images, rng) if cfg.augment else images
            loss, parts = batch_loss(model, tok, items, batch, captions, cfg, images)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(batch)
        row = {"epoch": epoch, **{f"train_{k}": round(v / len(train_ids), 4) for k, v in sums.items()}}
        if len(val_ids):
            row["val_loss"] = round(validation_loss(model, tok, items, val_ids, cfg), 4)
        history.append(row)
        log(f"clip epoch {epoch:3d} {row} scale {model.logit_scale.exp().item():.1f} "
            f"{time.perf_counter() - t0:.1f}s")
        if len(val_ids):
            if row["val_loss"] < best - 1e-4:
                best, best_epoch, waited = row["val_loss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited > cfg.patience:
                    break
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    epochs_run = len(history)
    metrics = {
        "dataset": data.name, "items": data.num_items, "items_with_image": n_img,
        "train_items": int(len(train_ids)), "validation_items": int(len(val_ids)),
        "image_tower": tower,
        "objectives": ([f"image-text InfoNCE ({len(train_img)} training items with an image)"] if len(train_img)
                       else []) + ([f"caption-text InfoNCE x {cfg.text_weight}"] if cfg.text_weight > 0 else []),
        "epochs_run": epochs_run, "best_epoch": best_epoch if best_state is not None else epochs_run,
        "stopped_early": bool(len(val_ids) and epochs_run < cfg.epochs),
        "validation": retrieval_metrics(model, tok, items, val_ids) if len(val_ids) else None,
        "untrained_validation": before,
        "train_probe": retrieval_metrics(model, tok, items, train_ids[:max(len(val_ids), 100)]),
        "history": history,
        "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1), "threads": cfg.threads,
        "vocab_size": tok.vocab_size, "context_length": tok.context_length, "texts_truncated": truncated,
        "image_mean": round(mean, 4), "image_std": round(std, 4),
        "train_config": dataclasses.asdict(cfg),
    }
    if metrics["validation"]:
        v = metrics["validation"]
        log("clip validation: " + ", ".join(f"{k} {v[k]}" for k in (
            "i2t_recall@1", "i2t_recall@10", "t2i_recall@1", "t2i_recall@10", "title2text_recall@10") if k in v))
    save_model_dir(model, tok, out, extra={"dataset": data.name, "train": dataclasses.asdict(cfg),
                                           "image_tower": tower})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main() -> None:
    from data.build_data import load_build_data
    t_start, c_start = time.perf_counter(), time.process_time()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="dataset directory (docs/dataset.md)")
    p.add_argument("--out", type=Path, required=True)
    d = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "caption_mix":
            p.add_argument(flag, type=float, nargs=len(VIEWS), default=d.caption_mix, metavar=tuple(v.upper() for v in VIEWS))
        elif f.name == "augment":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=d.augment)
        else:
            p.add_argument(flag, type=type(getattr(d, f.name)), default=getattr(d, f.name))
    a = p.parse_args()
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    m = train_on_items(a.out, cfg, load_build_data(a.data))
    print(json.dumps({k: m[k] for k in ("image_tower", "validation", "epochs_run", "best_epoch", "train_seconds",
                                        "train_cpu_seconds")}, indent=2))
    print(f"total wall {time.perf_counter() - t_start:.1f}s, cpu {time.process_time() - c_start:.1f}s "
          f"(threads={cfg.threads})", flush=True)


if __name__ == "__main__":
    main()
