"""Decoding image files to square uint8 arrays: shorter side resized to the target size, then centre-cropped."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from fspkd.core.errors import FspkdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """Whether a file name has an image suffix and is not hidden (e.g. macOS '._x.jpg' sidecars)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, size: int, source: str) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array (size, size, 3); FspkdError naming `source` if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big photos
                rgb = image.convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise FspkdError(f"{source}: unreadable image ({type(err).__name__}: {err})") from None
    return np.asarray(resize_and_crop(rgb, size))


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (keeping the aspect ratio), then crop the centre square."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return resized.crop((left, top, left + size, top + size))
