"""A tiny shop dataset (docs/dataset.md) for the CLIP tests: items of 4 leaf categories whose images are
category-specific shapes (bar, column, square, cross) in a few sizes and formats; titles name the category.

``write_tiny(directory, n_items=48, image_every=1, long_text=False, campaigns=False)``: every `image_every`-th
item has an image (0 = none: a text-only dataset); long_text gives one item a title of more than 32 tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CATEGORIES = ["tops > shirts", "tops > tees", "shoes > boots", "bags > totes"]
NOUNS = ["shirt", "tee", "boot", "tote"]
ADJECTIVES = ["red", "blue", "soft", "slim", "classic", "bold"]
BRANDS = ["acme", "zephyr", None]


def shape_image(category: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """uint8 [size, size]: a bright category shape, jittered by a pixel or two, on a dark noisy background."""
    img = rng.integers(0, 40, size=(size, size)).astype(np.uint8)
    j = int(rng.integers(-2, 3))
    c, w = size // 2 + j, max(2, size // 7)
    if category == 0:
        img[c - w:c + w, 3:-3] = 230  # horizontal bar
    elif category == 1:
        img[3:-3, c - w:c + w] = 230  # vertical bar
    elif category == 2:
        img[c - 3 * w:c + 3 * w, c - 3 * w:c + 3 * w] = 230  # square
    else:
        img[c - w:c + w, 3:-3] = 230  # cross
        img[3:-3, c - w:c + w] = 230
    return img


def write_tiny(directory: str | Path, n_items: int = 48, image_every: int = 1, long_text: bool = False,
               campaigns: bool = False, seed: int = 0) -> Path:
    d = Path(directory)
    (d / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_items):
        cat = k % len(CATEGORIES)
        title = f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} {NOUNS[cat]} model {k}"
        if long_text and k == 0:
            title = " ".join(["very long title"] * 12) + f" {NOUNS[cat]}"
        image = None
        if image_every and k % image_every == 0:
            kind = k % 3
            if kind == 0:  # 28x28 grayscale PNG (exact pixels)
                image = f"images/{k}.png"
                Image.fromarray(shape_image(cat, rng), mode="L").save(d / image)
            elif kind == 1:  # a bigger RGB PNG
                image = f"images/{k}.png"
                g = shape_image(cat, rng, 56)
                Image.fromarray(np.stack([g] * 3, -1), mode="RGB").save(d / image)
            else:  # a JPEG
                image = f"images/{k}.jpg"
                Image.fromarray(shape_image(cat, rng, 42), mode="L").convert("RGB").save(d / image, quality=95)
        rows.append({"item_id": 100 + 3 * k, "title": title, "category": CATEGORIES[cat],
                     "brand": BRANDS[k % len(BRANDS)], "image": image})
    pd.DataFrame(rows).to_csv(d / "items.csv", index=False)
    events = pd.DataFrame({"user_id": [f"u{i % 5}" for i in range(20)],
                           "item_id": [100 + 3 * (i % n_items) for i in range(20)],
                           "event": "view", "timestamp": [1_700_000_000 + 60 * i for i in range(20)]})
    events.to_csv(d / "events.csv", index=False)
    if campaigns:
        pd.DataFrame({"campaign_id": [1, 2], "title": ["huge sale on every tote", "new shirts arrived"],
                      "item_id": [100 + 3 * 3, None]}).to_csv(d / "campaigns.csv", index=False)
        pd.DataFrame({"user_id": ["u0", "u1"], "campaign_id": [1, 2], "timestamp": [1_700_000_000] * 2,
                      "clicked": [1, 0]}).to_csv(d / "ad_impressions.csv", index=False)
    return d
