"""Image loading and the tower's square input: ``square`` | ``pad`` | ``resize``.

- ``square``: resize the short side to ``size`` and centre-crop (CLIP's own preprocessing),
- ``pad``: pad to a square with the tower's mean colour, then resize (LLaVA-1.5),
- ``resize``: stretch to ``size`` x ``size``.
"""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from llavakit.errors import DataError

MODES = ("square", "pad", "resize")
# what these functions compute, for caches of their results: bump when pixels change
# (2: the pad colour is int(mean * 255), LLaVA's, instead of rounding)
PREPROCESSING_VERSION = 2


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied; palette / RGBA / LA / grayscale / CMYK / 16-bit / float → 8-bit RGB.

    Transparent pixels are composited on white. 16-bit samples are scaled by 255/65535; 32-bit
    integer and float images are scaled from their own min–max range.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr / (257.0 if arr.max() > 255 else 1.0)
        elif arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA") if img.mode != "La" else img.convert("LA").convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


# What Pillow raises for unreadable files besides OSError (UnidentifiedImageError, "truncated"):
# some decoders raise SyntaxError ("broken PNG file"), EOFError, struct.error or zlib.error.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


# One rule for every image, checked from its header before decoding (:func:`check_size`): the pixel
# count, and with a ``pad`` model the square it is padded to. The limit differs by who sends images:
# chat / infer / serve take them from users (``--max-image-pixels``); training, alignment and `data
# inspect` read a dataset (``data.max_image_pixels``: a 16 MP phone photo, padded, is 21 M pixels).
DEFAULT_MAX_PIXELS = 4096 * 4096
DATA_MAX_PIXELS = 8192 * 8192


def check_size(width: int, height: int, what: str, max_pixels: int | None, canvas: bool = False,
               knob: str = "--max-image-pixels") -> None:
    """Refuse an image over ``max_pixels`` (``canvas``: also the square a ``pad`` model pads it to);
    ``knob`` is the option that raises the limit, named in the error."""
    if not max_pixels:
        return
    if width * height > max_pixels:
        raise DataError(f"image {what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                        f"({knob})")
    if canvas and max(width, height) ** 2 > max_pixels:
        raise DataError(f"image {what} is {width}x{height}: this model pads it to a {max(width, height)}-pixel "
                        f"square, over the limit of {max_pixels} pixels (crop it, or raise {knob})")


def _open(path: Path, max_pixels: int | None, canvas: bool, knob: str):
    """Open ``path`` (the header only) and check its size; errors are DataErrors naming the file."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"image {path} is a directory") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is far over the pixel limit: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"image {path} cannot be decoded: {type(exc).__name__}: {exc}") from None
    try:
        check_size(*img.size, str(path), max_pixels, canvas, knob)
    except DataError:
        img.close()
        raise
    return img


def read_size(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, canvas: bool = False,
              knob: str = "--max-image-pixels") -> tuple[int, int]:
    """An image file's ``(width, height)`` from its header, nothing decoded: a missing, empty or
    non-image file, or one over ``max_pixels``, raises DataError naming it (a cheap check of a dataset)."""
    with _open(Path(path), max_pixels, canvas, knob) as img:
        return img.size


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, canvas: bool = False,
               knob: str = "--max-image-pixels") -> Image.Image:
    """Open and fully decode an image as RGB; a corrupt or missing file raises DataError, and so does
    one over ``max_pixels`` (see :func:`check_size`), before it is decoded. ``None`` or 0: no limit."""
    path = Path(path)
    with _open(path, max_pixels, canvas, knob) as img:
        try:
            img.load()
            return to_rgb(img)
        except _DECODE_ERRORS as exc:
            raise DataError(f"image {path} cannot be decoded: {type(exc).__name__}: {exc}") from None


def image_reader(image_mode: str, max_pixels: int | None = DATA_MAX_PIXELS,
                 knob: str = "data.max_image_pixels") -> Callable[[str | Path], Image.Image]:
    """:func:`load_image` for a dataset: ``max_pixels`` and ``image_mode``'s canvas (picklable)."""
    return functools.partial(load_image, max_pixels=max_pixels, canvas=image_mode == "pad", knob=knob)


def fit_square(img: Image.Image, size: int, mode: str, fill: Sequence[float] = (0.5, 0.5, 0.5)) -> Image.Image:
    """Make ``img`` a ``size`` x ``size`` RGB image by ``mode``; ``fill`` is the pad colour in 0–1."""
    if mode not in MODES:
        raise DataError(f"image mode {mode!r} is not one of {', '.join(MODES)}")
    img = to_rgb(img)
    w, h = img.size
    if mode == "resize":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "pad":
        side = max(w, h)
        colour = tuple(int(c * 255) for c in fill)  # truncated, as LLaVA's expand2square and transformers do
        canvas = Image.new("RGB", (side, side), colour)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas.resize((size, size), Image.Resampling.BICUBIC)
    # square: short side to size, centre crop
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(
    images: Sequence[Image.Image], size: int, mode: str, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """A batch ``(B, 3, size, size)`` float32, normalised with ``mean``/``std`` (0–1 scale)."""
    arrays = [np.asarray(fit_square(img, size, mode, fill=mean), dtype=np.float32) / 255.0 for img in images]
    if not arrays:
        return torch.zeros(0, 3, size, size)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((batch - mean_t) / std_t).contiguous()
