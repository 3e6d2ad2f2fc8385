"""Reading image files of any format and mode into uint8 arrays of a fixed size and channel count."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxcnn.errors import ImageError


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer images of more than 8 bits scaled from 0..65535 to 0..255 (a fixed scale, so a value
    maps alike in every file); float images from [0, 1] if their maximum is <= 1, else taken as
    0..255. A transparency colour becomes an alpha channel. Other modes are returned unchanged."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    scale = (255.0 if array.max(initial=0) <= 1.0 else 1.0) if image.mode == "F" else 255.0 / 65535.0
    gray = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if "transparency" not in image.info:
        return Image.fromarray(gray, "L")
    alpha = np.where(array == image.info["transparency"], 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray, alpha], axis=-1), "LA")


def convert(image: Image.Image, size: tuple[int, int], channels: int, crop_pct: float | None = None) -> np.ndarray:
    """Converts a PIL image to uint8 (height, width, channels).

    The EXIF orientation is applied (photos); transparency is composited over black (the MNIST
    background); palette, CMYK and 16-bit images are converted first. Resizing uses bilinear
    filtering with antialiasing: to `size` directly, or with `crop_pct` as ImageNet evaluation
    does (shorter side to height / crop_pct keeping the aspect ratio, then the central `size`).
    """
    image = _to_8bit(ImageOps.exif_transpose(image))
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    if crop_pct:
        short = round(height / crop_pct)
        scale = short / min(image.size)
        resized = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
        image = image.resize(resized, Image.Resampling.BILINEAR)
        left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    elif image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def load_image(path: str | pathlib.Path, size: tuple[int, int], channels: int,
               crop_pct: float | None = None) -> np.ndarray:
    """Reads one image file (any format PIL reads) as uint8 (height, width, channels).

    Raises:
      ImageError: the file is missing or not a readable image.
    """
    path = pathlib.Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return convert(image, size, channels, crop_pct)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
