"""Item and creative images -> the CLIP image tower's input: uint8 [size, size] grayscale (size 28 by default).

One rule for every image, whatever its size, format and mode (docs/dataset.md: anything Pillow opens):

1. Decode the first frame (animated GIF/WebP: frame 0), apply the EXIF orientation (phone photos).
2. To grayscale: transparent pixels (RGBA, LA, palette images with a transparent colour) are composited onto
   WHITE first, the usual product-page background; 16-bit and float images are scaled to 0..255 (not
   clipped); everything else goes through Pillow's own `convert("L")` (ITU-R 601 luma).
3. Keep the aspect ratio by PADDING, not cropping: the longer side is resized to `size` (Lanczos; up- or
   down-scaling), the shorter side keeps its proportion, and the image is centred on a square canvas filled
   with the median of the image's border pixels, so the padding continues the photo's own background
   (white studio shots get white bars, Fashion-MNIST-style black backgrounds get black ones). Padding keeps the
   whole product (a crop would cut the toes off a shoe photographed side-on).

An image that already is `size` x `size` grayscale comes back with its exact pixels (the simulator's
Fashion-MNIST PNGs are not resampled).

Errors: `ImageError` (a ValueError) whose message starts with the file's path.
numpy + Pillow only (no torch): the validator and the serving side may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

DEFAULT_SIZE = 28  # the image tower's input (clip_embed: image UINT8 [n, 28, 28])
BACKGROUND_FOR_TRANSPARENCY = 255  # white


class ImageError(ValueError):
    """An image that cannot be read; the message names the file."""


def _to_gray(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (BACKGROUND_FOR_TRANSPARENCY,) * 3 + (255,))
        return Image.alpha_composite(canvas, rgba).convert("L")
    if mode == "L":
        return img
    if mode.startswith("I") or mode == "F":  # 16-bit / 32-bit integer or float: scale, don't clip
        a = np.asarray(img, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        if hi <= 255.0 and a.min(initial=0.0) >= 0.0:
            scaled = a
        elif mode.startswith("I;16") or (a.min(initial=0.0) >= 0.0 and hi <= 65535.0):
            scaled = a / 257.0
        else:  # arbitrary range: min-max
            lo = float(a.min())
            scaled = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L")  # RGB, CMYK, YCbCr, 1, P without transparency, HSV, LAB...


def _border_median(gray: np.ndarray) -> int:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return int(np.median(border))


def to_square_gray(img: Image.Image, size: int = DEFAULT_SIZE) -> np.ndarray:
    """A decoded Pillow image -> uint8 [size, size] by the module's rule (grayscale, aspect kept by padding)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    gray = _to_gray(ImageOps.exif_transpose(img))
    w, h = gray.size
    if w < 1 or h < 1:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if (w, h) == (size, size):
        return np.array(gray, dtype=np.uint8)
    fill = _border_median(np.asarray(gray))
    scale = size / max(w, h)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    resized = gray.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("L", (size, size), fill)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return np.array(canvas, dtype=np.uint8)


def load_image(path: str | Path, size: int = DEFAULT_SIZE) -> np.ndarray:
    """One image file of any size/format/mode Pillow opens -> uint8 [size, size] grayscale (see the module
    docstring). Raises ImageError naming the file when it is missing or cannot be decoded."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.seek(0)
            if img.format == "JPEG":
                img.draft("L", (size, size))  # DCT-domain downscale of big JPEGs (never below size)
            img.load()
            return to_square_gray(img, size)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except Exception as err:  # Pillow raises OSError, UnidentifiedImageError, DecompressionBombError, ValueError...
        raise ImageError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def load_images(paths: Iterable[str | Path | None], size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Images of a list of paths (None = no image) -> (uint8 [n, size, size], has_image bool [n]); rows without an
    image are zeros. A file used by several rows is decoded once."""
    paths = list(paths)
    images = np.zeros((len(paths), size, size), np.uint8)
    has = np.zeros(len(paths), bool)
    cache: dict[Path, np.ndarray] = {}
    for i, p in enumerate(paths):
        if p is None:
            continue
        key = Path(p)
        if key not in cache:
            cache[key] = load_image(key, size)
        images[i] = cache[key]
        has[i] = True
    return images, has


def load_catalog_images(catalog, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A catalog's images (data.build_data.ItemTable.images, indexed by internal item id, row 0 = padding) ->
    (uint8 [N+1, size, size], has_image bool [N+1]); row 0 and items without an image are zeros / False."""
    images, has = load_images(catalog.images, size)
    has[0] = False
    images[0] = 0
    return images, has
