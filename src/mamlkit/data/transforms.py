"""Image decoding and resizing with Pillow: bytes in, a uint8 array out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


def image_size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``(height, width)`` from an int or a pair; None stays None."""
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive; got {size}.")
    return int(height), int(width)


def decode_image(
    data: bytes,
    *,
    size: tuple[int, int] | None = None,
    mode: str = "L",
    resample: str = "lanczos",
    invert: bool = False,
) -> np.ndarray:
    """Decode image bytes to uint8 ``[H, W]`` (mode ``"L"``) or ``[3, H, W]`` (mode ``"RGB"``).

    The image is converted to ``mode`` before resizing to ``size = (height, width)`` so that
    ``resample`` really filters (Pillow silently uses nearest neighbour on 1-bit images).
    ``resample="nearest"`` on a 1-bit image keeps it binary. ``invert`` maps v to 255 - v.
    Pillow errors propagate; callers name the file in their message.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (grayscale) or 'RGB'; got {mode!r}.")
    image: Image.Image = Image.open(io.BytesIO(data))
    image.load()
    if size is not None and (image.height, image.width) != size:
        if resample != "nearest":
            image = image.convert(mode)
        image = image.resize((size[1], size[0]), resample=RESAMPLE[resample])
    array = np.asarray(image.convert(mode), dtype=np.uint8)
    if invert:
        array = 255 - array
    return np.ascontiguousarray(array.transpose(2, 0, 1) if array.ndim == 3 else array)
