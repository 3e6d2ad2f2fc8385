"""Reading image files of any format and mode into uint8 arrays of a fixed size and channel count."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float gray images scaled to 8 bits; other modes unchanged."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            scale = 255.0
        elif image.mode == "F" or array.max(initial=0) <= 255:
            scale = 1.0
        else:
            scale = 255.0 / 65535.0
        return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), "L")
    return image


def convert(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """Converts a PIL image to uint8 (height, width, channels).

    Transparency is composited over black (the MNIST background); palette, CMYK and
    16-bit images are converted first. Resizing uses bilinear filtering with antialiasing.
    """
    image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def load_image(path: str | pathlib.Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """Reads one image file (any format PIL reads) as uint8 (height, width, channels).

    Raises:
      ImageError: the file is missing or not a readable image.
    """
    path = pathlib.Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return convert(image, size, channels)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
