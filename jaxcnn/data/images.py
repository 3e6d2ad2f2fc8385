"""Reading image files of any format and mode into uint8 arrays of a fixed size and channel count,
and the ImageNet evaluation resize + centre crop of converted weights (`EvalCrop`), done as timm and
torchvision do it."""

from __future__ import annotations

import dataclasses
import math
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


# PIL's filter for each interpolation name of timm (`str_to_pil_interp`) and torchvision
# (`InterpolationMode.value`; torchvision maps nearest-exact to PIL's NEAREST for PIL images).
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "nearest-exact": Image.Resampling.NEAREST,
              "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
              "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
              "lanczos": Image.Resampling.LANCZOS}
CROP_MODES = ("center", "squash")  # timm's crop_mode values that jaxcnn does ("border" pads: not done)


@dataclasses.dataclass(frozen=True)
class EvalCrop:
    """The evaluation transform of ImageNet weights: a resize with `interpolation`, then the central
    image size. As timm's `transforms_imagenet_eval` and torchvision's `ImageClassification` preset do
    it on PIL images (PIL's filters antialias when they shrink), before `ToTensor` (/ 255) and
    `Normalize`, which the model's device preprocessing does."""

    resize_size: tuple[int, int]  # (h, w) before the crop: timm's scale_size, torchvision's (resize_size,) * 2
    interpolation: str = "bilinear"  # a key of RESAMPLING
    crop_mode: str = "center"  # center: keep the aspect ratio; squash: resize to resize_size exactly
    crop_pct: float | None = None  # what resize_size came from (recorded, not used)

    @staticmethod
    def timm_resize_size(size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
        """timm's `transforms_imagenet_eval`: scale_size = floor(size / crop_pct) per side."""
        return tuple(math.floor(x / crop_pct) for x in size)

    def resized(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) the image of `image_hw` is resized to before the centre crop."""
        (h, w), (rh, rw) = image_hw, self.resize_size
        if self.crop_mode == "squash":  # timm: Resize((rh, rw))
            return rh, rw
        if rh == rw:
            # torchvision `Resize(int)` (`transforms.functional._compute_resized_output_size`), used by its
            # preset and by timm for a square scale_size: shorter side -> rh, longer side truncated.
            short, long = min(h, w), max(h, w)
            new_long = int(rh * long / short)
            return (rh, new_long) if h <= w else (new_long, rh)
        # timm `ResizeKeepRatio(scale_size)` (longest=0): the smaller ratio, each side rounded
        ratio = min(h / rh, w / rw)
        return round(h / ratio), round(w / ratio)

    def describe(self, size: tuple[int, int]) -> str:
        """The resize and crop in words, with the arithmetic that reproduces them exactly."""
        (ch, cw), (rh, rw) = size, self.resize_size
        if self.crop_mode == "squash":
            resize = f"resize it to {rh}x{rw} (height x width)"
        elif rh == rw:
            resize = f"resize it to shorter side {rh}, longer side int({rh} * longer / shorter) (truncated)"
        else:
            resize = (f"resize it to round(height / r) x round(width / r) with r = min(height / {rh}, "
                      f"width / {rw})")
        return (f"{resize} with PIL's Image.resize and Image.Resampling.{RESAMPLING[self.interpolation].name} "
                f"(antialiased when shrinking), then take the central {ch}x{cw} of the resized image: top = "
                f"int(round((height - {ch}) / 2)), left = int(round((width - {cw}) / 2)) (Python's round, halves "
                "to even; a side shorter than the crop is zero-padded, (crop - side) // 2 before it) - as timm's "
                "transforms_imagenet_eval and torchvision's ImageClassification do it")

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The resized and centre-cropped PIL image of `size` (h, w)."""
        h, w = self.resized((image.height, image.width))
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), RESAMPLING[self.interpolation])
        # torchvision `center_crop`: offsets int(round((side - crop) / 2.0)); a side shorter than the crop
        # is zero-padded by (crop - side) // 2 before it (PIL's crop fills outside the image with zeros).
        (ch, cw) = size
        top = -((ch - h) // 2) if ch > h else int(round((h - ch) / 2.0))
        left = -((cw - w) // 2) if cw > w else int(round((w - cw) / 2.0))
        return image.crop((left, top, left + cw, top + ch))


def convert(image: Image.Image, size: tuple[int, int], channels: int, crop: EvalCrop | None = None) -> np.ndarray:
    """Converts a PIL image to uint8 (height, width, channels).

    The EXIF orientation is applied (photos); transparency is composited over black (the MNIST
    background); palette, CMYK and 16-bit images are converted first. Without `crop` the image is
    resized to `size` directly (bilinear, antialiased); with it as ImageNet weights' library does
    (`EvalCrop`: resize, then the central `size`).
    """
    image = _to_8bit(ImageOps.exif_transpose(image))
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    if crop is not None:
        image = crop(image, size)
    elif image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def load_image(path: str | pathlib.Path, size: tuple[int, int], channels: int,
               crop: EvalCrop | None = None) -> np.ndarray:
    """Reads one image file (any format PIL reads) as uint8 (height, width, channels).

    Raises:
      ImageError: the file is missing or not a readable image.
    """
    path = pathlib.Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return convert(image, size, channels, crop)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
