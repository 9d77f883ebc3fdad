"""data/images.py: any image Pillow opens -> the image tower's uint8 [28, 28] grayscale input."""

import numpy as np
import pytest
from PIL import Image

from data.images import ImageError, load_catalog_images, load_image, load_images


def test_tower_sized_grayscale_keeps_exact_pixels(tmp_path):
    px = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
    Image.fromarray(px, mode="L").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    np.testing.assert_array_equal(out, px)


def test_aspect_is_kept_by_padding_with_the_border_colour(tmp_path):
    # A wide white studio shot (80 x 40) with a black product filling the middle half of its width.
    img = np.full((40, 80, 3), 255, np.uint8)
    img[10:30, 20:60] = 0
    Image.fromarray(img, mode="RGB").save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png")
    assert out.shape == (28, 28)
    # 80x40 -> 28x14 centred: rows 0..6 and 21..27 are padding in the photo's background colour (white).
    assert (out[:7] == 255).all() and (out[21:] == 255).all()
    assert out[14, 14] < 10 and out[14, 2] > 245  # product in the centre, background at the sides
    # Black background (Fashion-MNIST style): black bars; a tall image pads left and right.
    tall = np.zeros((60, 30), np.uint8)
    tall[10:50, 5:25] = 200
    Image.fromarray(tall, mode="L").save(tmp_path / "tall.png")
    out = load_image(tmp_path / "tall.png")
    assert (out[:, :7] == 0).all() and (out[:, 21:] == 0).all() and out[14, 14] > 190


def test_modes_and_formats(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8)
    cases = {
        "rgb.jpg": Image.fromarray(rgb, "RGB"),
        "big.jpg": Image.fromarray(np.repeat(np.repeat(rgb, 30, 0), 30, 1), "RGB"),  # 1500x1500: JPEG draft
        "p.gif": Image.fromarray(rgb, "RGB").convert("P"),
        "cmyk.tif": Image.fromarray(rgb, "RGB").convert("CMYK"),
        "bw.bmp": Image.fromarray(rgb[:, :, 0] > 128),
        "rgb.webp": Image.fromarray(rgb, "RGB"),
        "small.png": Image.fromarray(rgb[:10, :7], "RGB"),  # upscaled
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.shape == (28, 28) and out.dtype == np.uint8, name
        assert out.std() > 0, name


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)  # fully transparent black ...
    rgba[10:18, 10:18] = (0, 0, 0, 255)  # ... but an opaque black square
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    assert out[0, 0] == 255 and out[12, 12] == 0
    p = Image.fromarray(rgba[:, :, 0], "L").convert("P")
    p.info["transparency"] = 0
    p.save(tmp_path / "t.gif", transparency=0)
    assert load_image(tmp_path / "t.gif")[0, 0] == 255


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    a = np.zeros((28, 28), np.uint16)
    a[:, 14:] = 65535
    a[:, :7] = 32896  # 128 * 257
    Image.fromarray(a).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png")
    assert out[0, 20] == 255 and out[0, 3] == 128 and out[0, 10] == 0


def test_exif_orientation_is_applied(tmp_path):
    img = np.full((20, 40), 255, np.uint8)
    img[:10] = 0  # dark top half of a wide image
    pil = Image.fromarray(img, "L")
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the top goes to the right
    pil.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg").astype(int)
    assert out[:, 15:21].mean() < 60 and out[:, 7:13].mean() > 200


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png: cannot read image"):
        load_image(tmp_path / "bad.png")
    assert issubclass(ImageError, ValueError)
    with pytest.raises(ImageError, match="bad.png"):
        load_images([None, tmp_path / "bad.png"])


def test_load_images_and_the_catalog(tmp_path):
    from data.build_data import load_build_data
    from tests.data.fixture_dataset import write_fixture
    write_fixture(tmp_path / "ds")
    data = load_build_data(tmp_path / "ds")
    images, has = load_catalog_images(data.catalog)
    n = data.num_items
    assert images.shape == (n + 1, 28, 28) and images.dtype == np.uint8 and has.shape == (n + 1,)
    assert not has[0] and not images[0].any()
    np.testing.assert_array_equal(has[1:], [p is not None for p in data.catalog.images[1:]])
    assert not images[1:][~has[1:]].any()
    for i in np.flatnonzero(has):
        np.testing.assert_array_equal(images[i], load_image(data.catalog.images[i]))
    imgs, h = load_images([None, data.catalog.images[int(np.flatnonzero(has)[0])], None], size=14)
    assert imgs.shape == (3, 14, 14) and h.tolist() == [False, True, False]
