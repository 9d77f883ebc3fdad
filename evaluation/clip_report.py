"""docs/results/clip.md: the CLIP that each build trained and serves (`clip_embed`, the `embedding_knn` source,
`score_ads` retrieval), rendered from the builds' result files (docs/results/build_*.json: the build's
build_manifest.json with the command, commit, date and machine of the build).

    python -m evaluation.report      # renders it with every other generated table

The figures are those `models.clip.train` measured inside the build (`manifest["clip"]`): nothing here is run
again, so the page always says what the committed builds served.
"""

from __future__ import annotations

from evaluation.provenance import line

# (metric key in the validation dict, label); the image metrics exist only when the dataset has images.
METRICS = (
    ("title2text_recall@1", "title -> full text, recall@1 (exact item)"),
    ("title2text_recall@10", "title -> full text, recall@10 (exact item)"),
    ("i2t_recall@1", "image -> text, recall@1 (exact item)"),
    ("i2t_recall@10", "image -> text, recall@10 (exact item)"),
    ("i2t_category_recall@10", "image -> text, recall@10 (same leaf category)"),
    ("t2i_recall@1", "text -> image, recall@1 (exact item)"),
    ("t2i_recall@10", "text -> image, recall@10 (exact item)"),
    ("t2i_category_recall@10", "text -> image, recall@10 (same leaf category)"),
)
SPLITS = (("untrained_validation", "untrained, held-out items"), ("validation", "**trained, held-out items**"),
          ("train_probe", "trained, training items"))


def _value(d: dict | None, key: str) -> str:
    return "n/a" if not d or key not in d else f"{d[key]:.4f}"


def _dataset(build: dict) -> list[str]:
    clip = build["manifest"]["clip"]
    cfg = clip.get("train_config", {})
    val = clip.get("validation", {})
    lines = [
        f"## {clip['dataset']}", "",
        f"From the build {line(build)}.", "",
        f"- Items: {clip['items']} ({clip['items_with_image']} with an image); {clip['train_items']} trained on, "
        f"{clip['validation_items']} held out (validation, never trained on).",
        f"- Image tower: {clip['image_tower']}.",
        f"- Objectives: {'; '.join(clip['objectives'])}.",
        f"- Vocabulary {clip['vocab_size']} words, context {clip['context_length']} tokens "
        f"({clip['texts_truncated']} texts truncated).",
        f"- Training: up to {cfg.get('epochs', '?')} epochs, batch {cfg.get('batch_size', '?')}, lr "
        f"{cfg.get('lr', '?')}, weight decay {cfg.get('weight_decay', '?')}, caption mix (text/title/category) "
        f"{cfg.get('caption_mix', '?')}, category weight {cfg.get('category_weight', '?')}, early stopping with "
        f"patience {cfg.get('patience', '?')}: {clip['epochs_run']} epochs run, the state of epoch "
        f"{clip['best_epoch']} kept; {clip['train_seconds']:.1f} s wall ({clip['train_cpu_seconds']:.1f} s CPU) "
        f"with {clip['threads']} threads.",
        f"- Serving index over the item embeddings: {clip['index']['config']['kind']} "
        f"({clip['index']['items']} items).", "",
        f"Retrieval over the {val.get('gallery_items', '?')} held-out items (chance recall@10 "
        f"{_value(val, 'chance_recall@10')}); the training-items probe uses a gallery of the same size.", "",
        "| metric | " + " | ".join(label for _, label in SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
    ]
    for key, label in METRICS:
        if key in val:
            lines.append(f"| {label} | " + " | ".join(_value(clip.get(s), key) for s, _ in SPLITS) + " |")
    return lines + [""]


def render(builds: list[dict]) -> str:
    lines = ["# CLIP of each build: held-out retrieval", "",
             "The CLIP each build trains (`models.clip.train`, called by `python -m exporters.build_repository`) "
             "on the dataset's own items and serves (`clip_embed`, the `embedding_knn` retrieval source, the "
             "creative embeddings of `score_ads`). Figures are the ones the build measured and recorded in its "
             "build_manifest.json (result files docs/results/build_*.json). Recall counts a hit when the exact "
             "item is among the top k of the gallery (or, for \"same leaf category\", an item of the query's leaf "
             "category). The model's own default budget, not a tuned one.", ""]
    for build in builds:
        lines += _dataset(build)
    return "\n".join(lines)
