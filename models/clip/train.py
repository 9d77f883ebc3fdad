"""Train the default CLIP contrastively on (Fashion-MNIST image, simulated item title) pairs.

Pairs: every Fashion-MNIST TRAIN image is paired, each step anew (seeded), with a random catalog item whose
leaf category maps to the image's class (data/creatives.py); the pair's text is a caption sampled by
creatives.CaptionSampler (text augmentation): the item title (p=0.4), campaign ad copy around the title's product
phrase (0.2), or a prompt template such as "a photo of a {cls}", "{cls}", "a {adj} {cls} by {brand}" (0.4).
The word vocabulary is built from creatives.vocabulary_texts (titles, simulator lexicon, every ad-copy template,
every prompt), so titles, campaign creatives and captions never hit <unk>; other words map to <unk>. Pairing is class-level, so other
same-class titles in a batch are not true negatives: the default loss is InfoNCE with every same-class pair as
a positive (multi-positive / UniCL-style targets); `--positives pair` gives the plain one-positive CLIP loss.

Held-out evaluation on the t10k images (never trained on):
- zero-shot class accuracy with prompts "a photo of a {class}" (10 Fashion-MNIST classes; a training
  template), the bare noun, and creatives.HELDOUT_PROMPT "the best {class}" (never a training caption);
- image->text recall@k over a gallery of ALL catalog item titles (one per item): a hit when one of the top-k
  titles belongs to an item of the image's class (the titles "of its item matches").

CLI: python -m models.clip.train --out DIR   (writes clip.pt, clip_config.json, vocab.json, metrics.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data import creatives, fashion_mnist as fm
from data.simulator import SimConfig, simulate
from models.clip.model import CLIP, CLIPConfig, save_model_dir
from serving.clip.text import WordTokenizer, image_pixels

PROMPT = "a photo of a {}"


@dataclasses.dataclass
class TrainConfig:
    seed: int = 0
    # Sized for the CI budget (<= 90 s wall for the whole command on 2 idle cores): see docs/results/clip.md.
    steps: int = 360
    batch_size: int = 192
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 20
    positives: str = "class"  # "class" (multi-positive InfoNCE) or "pair" (plain CLIP loss)
    eval_images: int = 10000  # held-out t10k images evaluated (all by default)
    threads: int = 2
    caption_mix: tuple = creatives.CAPTION_MIX  # (title, ad copy, prompt); (1, 0, 0) = titles only

    def __post_init__(self):
        if self.positives not in ("class", "pair"):
            raise ValueError(f"positives must be 'class' or 'pair', got {self.positives!r}")
        for name in ("steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Symmetric InfoNCE over a [B, B] image x text logit matrix. labels=None: the diagonal is the only
    positive; else every (i, j) with labels[i] == labels[j] is a positive (targets spread evenly)."""
    b = logits.shape[0]
    if labels is None:
        target = torch.arange(b, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = (labels[:, None] == labels[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())


@torch.no_grad()
def encode_images(model: CLIP, images: np.ndarray, batch: int = 1000) -> torch.Tensor:
    res = model.config.image_resolution
    def enc(chunk):
        return model.encode_image(model.normalize_pixels(torch.from_numpy(image_pixels(chunk, res))))
    return torch.cat([enc(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def encode_texts(model: CLIP, tok: WordTokenizer, texts: list[str], batch: int = 1000) -> torch.Tensor:
    ids = torch.from_numpy(tok(texts, model.config.context_length))
    return torch.cat([model.encode_text(_trim(ids[i:i + batch])) for i in range(0, len(ids), batch)])


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """Drop all-padding trailing columns: with the causal mask they cannot change the EOT output."""
    n = int((ids != 0).sum(1).max())
    return ids[:, :max(n, 1)]


@torch.no_grad()
def evaluate(model: CLIP, tok: WordTokenizer, images: np.ndarray, labels: np.ndarray, titles: list[str],
             title_class: np.ndarray) -> dict:
    model.eval()
    img = encode_images(model, images)
    prompts = encode_texts(model, tok, [PROMPT.format(c) for c in fm.CLASS_PROMPT_NAMES])
    lab = torch.from_numpy(labels)
    zero_shot = float(((img @ prompts.t()).argmax(1) == lab).float().mean())
    # The bare class noun: the template words never occur in training captions (titles), so this isolates
    # what the unseen words cost.
    bare = encode_texts(model, tok, list(fm.CLASS_PROMPT_NAMES))
    zero_shot_bare = float(((img @ bare.t()).argmax(1) == lab).float().mean())
    held = encode_texts(model, tok, [creatives.HELDOUT_PROMPT.format(cls=c) for c in fm.CLASS_PROMPT_NAMES])
    zero_shot_held = float(((img @ held.t()).argmax(1) == lab).float().mean())
    gallery = encode_texts(model, tok, titles)
    top = (img @ gallery.t()).topk(5, dim=1).indices  # [N, 5] gallery rows
    hit = torch.from_numpy(title_class)[top] == lab[:, None]
    return {"zero_shot_acc": zero_shot, "zero_shot_acc_bare_class_name": zero_shot_bare,
            "zero_shot_acc_heldout_prompt": zero_shot_held,
            "i2t_recall@1": float(hit[:, 0].float().mean()),
            "i2t_recall@5": float(hit.any(1).float().mean()), "num_images": int(len(images)),
            "gallery_titles": int(len(titles))}


def train(out: str | Path, tcfg: TrainConfig = TrainConfig(), sim: SimConfig = SimConfig(),
          mcfg: CLIPConfig | None = None, data_root=None, log=None) -> dict:
    log = log or (lambda msg: print(msg, flush=True))
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    rng = np.random.default_rng(tcfg.seed)
    tr_x, tr_y = fm.load("train", data_root)
    te_x, te_y = fm.load("test", data_root)
    world = simulate(sim)
    titles = world.catalog.titles
    item_cls = creatives.item_classes(world.catalog, sim)
    tok = WordTokenizer.build(creatives.vocabulary_texts(world.catalog, sim), context_length=32)
    captions = creatives.CaptionSampler(world.catalog, sim, tcfg.caption_mix)

    mean = float(tr_x.mean() / 255.0)
    std = float(tr_x.std() / 255.0)
    mcfg = mcfg or CLIPConfig(vocab_size=tok.vocab_size, image_mean=(mean,) * 3, image_std=(std,) * 3)
    if mcfg.vocab_size < tok.vocab_size:
        raise ValueError(f"model vocab_size={mcfg.vocab_size} < tokenizer vocab {tok.vocab_size}")
    model = CLIP(mcfg)

    ev = np.random.default_rng(tcfg.seed + 1)
    n_eval = min(tcfg.eval_images, len(te_x))
    ev_idx = np.sort(ev.choice(len(te_x), n_eval, replace=False)) if n_eval < len(te_x) else np.arange(len(te_x))
    gallery_titles, gallery_cls = titles[1:], item_cls[1:]
    before = evaluate(model, tok, te_x[ev_idx], te_y[ev_idx], gallery_titles, gallery_cls)
    log(f"untrained: {before}")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tcfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / tcfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, tcfg.steps) / tcfg.steps)))

    order = rng.permutation(len(tr_x))
    pos = 0
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    for step in range(tcfg.steps):
        if pos + tcfg.batch_size > len(order):
            order, pos = rng.permutation(len(tr_x)), 0
        idx = order[pos:pos + tcfg.batch_size]
        pos += tcfg.batch_size
        labels = tr_y[idx]
        items = creatives.pair_titles_with_images(labels, item_cls, seed=int(rng.integers(2**31)))
        px = model.normalize_pixels(torch.from_numpy(image_pixels(tr_x[idx], mcfg.image_resolution)))
        ids = torch.from_numpy(tok(captions(items, rng), mcfg.context_length))
        logits, _ = model(px, _trim(ids))
        loss = contrastive_loss(logits, torch.from_numpy(labels) if tcfg.positives == "class" else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 25 == 0 or step == tcfg.steps - 1:
            log(f"step {step:4d} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f} "
                f"{time.perf_counter() - t0:.1f}s")
    train_s = time.perf_counter() - t0
    train_cpu_s = time.process_time() - c0
    model.eval()
    after = evaluate(model, tok, te_x[ev_idx], te_y[ev_idx], gallery_titles, gallery_cls)
    train_probe = evaluate(model, tok, tr_x[:2000], tr_y[:2000], gallery_titles, gallery_cls)
    log(f"held-out: {after}")
    metrics = {"held_out": after, "untrained_held_out": before, "train_subset": train_probe,
               "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu_s, 1),
               "threads": tcfg.threads, "vocab_size": tok.vocab_size,
               "samples_seen": tcfg.steps * tcfg.batch_size, "train_config": dataclasses.asdict(tcfg),
               "sim_seed": sim.seed, "num_items": sim.num_items}
    save_model_dir(model, tok, out, extra={"prompt": PROMPT, "class_names": fm.CLASS_PROMPT_NAMES,
                                           "train": dataclasses.asdict(tcfg)})
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_dir(model_dir: str | Path, sim: SimConfig = SimConfig(), data_root=None) -> dict:
    """Re-run the held-out evaluation (all t10k images) of a trained dir; updates its metrics.json."""
    from models.clip.model import ClipEmbedder
    emb = ClipEmbedder.load(model_dir)
    world = simulate(sim)
    te_x, te_y = fm.load("test", data_root)
    res = evaluate(emb.model, emb.tokenizer, te_x, te_y, world.catalog.titles[1:],
                   creatives.item_classes(world.catalog, sim)[1:])
    path = Path(model_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics["held_out"] = res
    path.write_text(json.dumps(metrics, indent=2))
    return res


def main() -> None:
    t_start, c_start = time.perf_counter(), time.process_time()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--positives", choices=["class", "pair"], default=TrainConfig.positives)
    p.add_argument("--eval-images", type=int, default=TrainConfig.eval_images)
    p.add_argument("--caption-mix", type=float, nargs=3, default=TrainConfig.caption_mix,
                   metavar=("TITLE", "AD", "PROMPT"), help="caption sampling probabilities")
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--sim-seed", type=int, default=0)
    p.add_argument("--num-items", type=int, default=SimConfig.num_items)
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the model already in --out")
    a = p.parse_args()
    if a.eval_only:
        torch.set_num_threads(a.threads)
        print(json.dumps(evaluate_dir(a.out, SimConfig(seed=a.sim_seed, num_items=a.num_items)), indent=2))
        return
    m = train(a.out, TrainConfig(seed=a.seed, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                 positives=a.positives, eval_images=a.eval_images, threads=a.threads,
                                 caption_mix=tuple(a.caption_mix)),
              SimConfig(seed=a.sim_seed, num_items=a.num_items))
    print(json.dumps({k: m[k] for k in ("held_out", "train_seconds", "train_cpu_seconds")}, indent=2))
    print(f"total wall {time.perf_counter() - t_start:.1f}s, cpu {time.process_time() - c_start:.1f}s "
          f"(threads={a.threads})", flush=True)


if __name__ == "__main__":
    main()
