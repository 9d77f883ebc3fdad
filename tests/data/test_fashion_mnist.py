"""Fashion-MNIST IDX reader and the item -> real image assignment of the fashion store."""

import gzip

import numpy as np
import pytest

from data import creatives, fashion_mnist as fm
from data.simulator import SimConfig, simulate


def _write_idx(path, arr: np.ndarray):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_dataset(root, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_read_idx_roundtrip(tmp_path):
    _fake_dataset(tmp_path)
    x, y = fm.load("train", tmp_path)
    assert x.shape == (50, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert list(y[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    xt, _ = fm.load("t10k", tmp_path)
    assert xt.shape == (20, 28, 28)


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\0" * 8))
    with pytest.raises(ValueError, match="magic"):
        fm.read_idx(tmp_path / "bad.gz")
    _write_idx(tmp_path / "short.gz", np.zeros((4, 2), np.uint8))
    raw = gzip.decompress((tmp_path / "short.gz").read_bytes())[:-3]
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="bytes"):
        fm.read_idx(tmp_path / "short.gz")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load("train", tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        fm.load("valid", tmp_path)


@pytest.mark.skipif(not (fm.DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_test_split():
    x, y = fm.load("test")
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10


def test_every_leaf_maps_to_a_class_and_titles_name_it():
    cfg = SimConfig(num_items=300, num_users=20)
    world = simulate(cfg)
    leaf_cls = creatives.leaf_to_class(cfg)
    assert leaf_cls.shape == (cfg.num_leaf_categories,)
    assert set(leaf_cls.tolist()) == set(range(10))  # the default 8x4 store covers all ten classes
    cls = creatives.item_classes(world.catalog, cfg)
    assert cls[0] == -1
    from data.simulator import leaf_name
    for i in range(1, world.catalog.num_items + 1):
        name = leaf_name(cfg, world.catalog.leaf_category[i])
        assert f" {name} " in world.catalog.titles[i]
        assert creatives.LEAF_NAME_TO_CLASS[name] == cls[i]


def test_item_images_are_of_the_item_class_and_seeded():
    cfg = SimConfig(num_items=300, num_users=20)
    world = simulate(cfg)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    images = rng.integers(0, 256, (2000, 28, 28)).astype(np.uint8)
    a = creatives.catalog_images(world.catalog, cfg, seed=3, train=(images, labels))
    b = creatives.catalog_images(world.catalog, cfg, seed=3, train=(images, labels))
    c = creatives.catalog_images(world.catalog, cfg, seed=4, train=(images, labels))
    assert np.array_equal(a.item_image_index, b.item_image_index)
    assert not np.array_equal(a.item_image_index, c.item_image_index)
    real = np.arange(1, world.catalog.num_items + 1)
    assert (labels[a.item_image_index[real]] == a.item_class[real]).all()
    assert np.array_equal(a.item_images[real], images[a.item_image_index[real]])
    for k in range(10):  # distinct images while a class has enough
        idx = a.item_image_index[a.item_class == k]
        assert len(np.unique(idx)) == len(idx)
    pairs = creatives.pair_titles_with_images(labels[:100], a.item_class, seed=1)
    assert (a.item_class[pairs] == labels[:100]).all()
    cr = creatives.campaign_creatives(world, a)
    assert len(cr.texts) == len(world.campaign_item) and cr.images.shape == (len(cr.texts), 28, 28)
    assert cr.texts[0] == world.catalog.titles[world.campaign_item[0]]
