"""Real product images for simulated items and campaign creatives.

Each catalog leaf category names a garment (data/simulator.py) that maps to one Fashion-MNIST class; each item
gets a real TRAIN image of its class (seeded, distinct while the class has images left). The t10k images are
held out: the held-out split pairs each t10k image with the title of a (seeded) random item of its class.

CaptionSampler is the CLIP training text augmentation: each (image, item) pair gets one caption drawn from
(a) the item title, (b) campaign ad copy around the title's product phrase (data/campaigns.py templates and
discount percentages), (c) prompt templates (PROMPT_TEMPLATES) filled with the item's leaf noun or its
Fashion-MNIST class noun, its adjective and its brand. vocabulary_texts() lists texts whose words cover every
word those sources can produce, so a WordTokenizer built from it never emits <unk> on titles, creatives or
captions; any other word maps to <unk>.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data import campaigns, fashion_mnist as fm
from data import simulator as _sim
from data.simulator import Catalog, SimConfig, World, leaf_name

# Leaf display name -> Fashion-MNIST label (0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal,
# 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot).
LEAF_NAME_TO_CLASS = {
    "t-shirt": 0, "tank top": 0, "graphic t-shirt": 0, "crop top": 0, "long-sleeve top": 0, "v-neck t-shirt": 0,
    "trouser": 1, "jeans": 1, "chino trouser": 1, "jogger": 1,
    "pullover": 2, "sweater": 2, "hoodie": 2, "sweatshirt": 2,
    "dress": 3, "maxi dress": 3, "midi dress": 3, "wrap dress": 3,
    "coat": 4, "jacket": 4, "parka": 4, "trench coat": 4,
    "sandal": 5, "slide sandal": 5, "strappy sandal": 5, "flip-flop": 5, "platform sandal": 5,
    "shirt": 6, "blouse": 6, "oxford shirt": 6, "flannel shirt": 6, "polo shirt": 6, "linen shirt": 6,
    "sneaker": 7, "running shoe": 7, "canvas sneaker": 7, "trainer": 7,
    "bag": 8, "handbag": 8, "backpack": 8, "tote bag": 8,
    "ankle boot": 9, "chelsea boot": 9, "combat boot": 9, "lace-up boot": 9, "heeled ankle boot": 9,
}


def leaf_to_class(cfg: SimConfig) -> np.ndarray:
    """int64 [num_leaf_categories]: the Fashion-MNIST class of every global leaf id."""
    names = [leaf_name(cfg, lf) for lf in range(cfg.num_leaf_categories)]
    unknown = sorted({n for n in names if n not in LEAF_NAME_TO_CLASS})
    if unknown:
        raise ValueError(f"leaf names without a Fashion-MNIST class: {unknown}")
    return np.array([LEAF_NAME_TO_CLASS[n] for n in names], np.int64)


def item_classes(catalog: Catalog, cfg: SimConfig) -> np.ndarray:
    """int64 [N+1]: Fashion-MNIST class per item id; -1 for the padding item 0."""
    cls = leaf_to_class(cfg)[catalog.leaf_category]
    cls[0] = -1
    return cls


def assign_item_images(item_cls: np.ndarray, train_labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """int64 [N+1]: index into the TRAIN images for each item (-1 for padding); seeded, distinct per class
    until a class runs out of images, then reused."""
    rng = np.random.default_rng(seed)
    out = np.full(len(item_cls), -1, np.int64)
    for c in range(fm.NUM_CLASSES):
        items = np.flatnonzero(item_cls == c)
        if len(items) == 0:
            continue
        pool = np.flatnonzero(train_labels == c)
        if len(pool) == 0:
            raise ValueError(f"no training image of class {c} for {len(items)} items")
        out[items] = rng.choice(pool, size=len(items), replace=len(items) > len(pool))
    return out


def pair_titles_with_images(labels: np.ndarray, item_cls: np.ndarray, seed: int) -> np.ndarray:
    """int64 [len(labels)]: for every image, a seeded random item id whose class equals the image's label."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), np.int64)
    for c in range(fm.NUM_CLASSES):
        where = np.flatnonzero(labels == c)
        if len(where) == 0:
            continue
        items = np.flatnonzero(item_cls == c)
        if len(items) == 0:
            raise ValueError(f"no catalog item of class {c} ({fm.CLASS_NAMES[c]}) to pair with its images")
        out[where] = rng.choice(items, size=len(where))
    return out


@dataclasses.dataclass
class CatalogImages:
    item_class: np.ndarray  # int64 [N+1], -1 for padding
    item_image_index: np.ndarray  # int64 [N+1] into the train split, -1 for padding
    item_images: np.ndarray  # uint8 [N+1, 28, 28], zeros for padding


def catalog_images(catalog: Catalog, cfg: SimConfig, seed: int = 0, root=None,
                   train: tuple[np.ndarray, np.ndarray] | None = None) -> CatalogImages:
    """Give every item a real image of its class from the Fashion-MNIST TRAIN split."""
    images, labels = train if train is not None else fm.load("train", root)
    cls = item_classes(catalog, cfg)
    idx = assign_item_images(cls, labels, seed)
    item_images = np.zeros((len(cls), images.shape[1], images.shape[2]), np.uint8)
    item_images[1:] = images[idx[1:]]
    return CatalogImages(item_class=cls, item_image_index=idx, item_images=item_images)


@dataclasses.dataclass
class Creatives:
    """Campaign creatives: campaign c promotes world.campaign_item[c] with that item's image and title."""
    campaign_item: np.ndarray  # int64 [C]
    images: np.ndarray  # uint8 [C, 28, 28]
    texts: list[str]


def campaign_creatives(world: World, cat_images: CatalogImages) -> Creatives:
    items = world.campaign_item
    return Creatives(campaign_item=items.copy(), images=cat_images.item_images[items],
                     texts=[world.catalog.titles[int(i)] for i in items])


# Prompt templates used as training captions; "{cls}" is the item's leaf noun ("hoodie") or its Fashion-MNIST
# class noun ("pullover"). "a photo of a {cls}" is the zero-shot template evaluated; HELDOUT_PROMPT is never
# a training caption (its words come from ad copy), to measure zero-shot on an unseen phrasing.
PROMPT_TEMPLATES = ("a photo of a {cls}", "{cls}", "a {adj} {cls}", "a {adj} {cls} by {brand}",
                    "a photo of a {adj} {cls}", "{brand} {cls}")
HELDOUT_PROMPT = "the best {cls}"
AD_PERCENTS = (10, 20, 30, 40, 50)  # as data/campaigns.build_campaigns draws them
# (title, ad copy, prompt template) sampling probabilities.
CAPTION_MIX = (0.4, 0.2, 0.4)


def _ad_templates() -> list[str]:
    return [t for style in campaigns.STYLES for t in campaigns._COPY[style]]


def vocabulary_texts(catalog: Catalog, cfg: SimConfig) -> list[str]:
    """Texts covering every word the titles, campaign creatives and caption templates can produce: all catalog
    titles, the simulator's title lexicon (brands, adjectives, category and leaf names, nouns, digits), every
    ad-copy template with every percentage, every prompt template with every class noun."""
    lexicon = [f"brand{b:03d}" for b in range(cfg.num_brands)] + list(_sim._ADJECTIVES) + list(_sim._NOUNS)
    lexicon += list(_sim._TOP_CATEGORIES) + [n for leaves in _sim._LEAF_CATEGORIES for n in leaves]
    lexicon += list(LEAF_NAME_TO_CLASS) + list(fm.CLASS_PROMPT_NAMES) + ["$0123456789.,"]
    ads = [t.format(product="", pct=p) for t in _ad_templates() for p in AD_PERCENTS]
    prompts = [t.format(cls=c, adj="", brand="") for t in PROMPT_TEMPLATES + (HELDOUT_PROMPT,)
               for c in fm.CLASS_PROMPT_NAMES]
    return list(catalog.titles[1:]) + lexicon + ads + prompts


class CaptionSampler:
    """Seeded training captions for items (see the module docstring); `mix` = (title, ad copy, prompt)
    probabilities."""

    def __init__(self, catalog: Catalog, cfg: SimConfig, mix: tuple[float, float, float] = CAPTION_MIX):
        mix = np.asarray(mix, np.float64)
        if mix.shape != (3,) or (mix < 0).any() or mix.sum() <= 0:
            raise ValueError(f"mix must be 3 non-negative probabilities (title, ad, prompt), got {mix.tolist()}")
        self.mix = mix / mix.sum()
        self.titles = catalog.titles
        cls = item_classes(catalog, cfg)
        self.class_noun = [fm.CLASS_PROMPT_NAMES[c] if c >= 0 else "" for c in cls]
        self.leaf_noun = [leaf_name(cfg, lf) for lf in catalog.leaf_category]
        self.brand = [f"brand{int(b):03d}" for b in catalog.brand]
        self.adjective = [t.split()[1] if t else "" for t in self.titles]  # titles: "brandNNN adj top leaf ..."
        self.ads = _ad_templates()

    def __call__(self, items: np.ndarray, rng: np.random.Generator) -> list[str]:
        items = np.asarray(items, np.int64)
        n = len(items)
        kind = rng.choice(3, size=n, p=self.mix)
        ad = rng.integers(len(self.ads), size=n)
        pct = rng.choice(AD_PERCENTS, size=n)
        tpl = rng.integers(len(PROMPT_TEMPLATES), size=n)
        use_leaf = rng.random(n) < 0.5
        out = []
        for i, it in enumerate(items.tolist()):
            if kind[i] == 0:
                out.append(self.titles[it])
            elif kind[i] == 1:
                out.append(self.ads[ad[i]].format(product=campaigns._product_phrase(self.titles[it]),
                                                  pct=int(pct[i])))
            else:
                noun = self.leaf_noun[it] if use_leaf[i] else self.class_noun[it]
                out.append(PROMPT_TEMPLATES[tpl[i]].format(cls=noun, adj=self.adjective[it],
                                                           brand=self.brand[it]))
        return out
