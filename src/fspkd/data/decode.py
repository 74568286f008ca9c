"""Decoding image files to square uint8 arrays: shorter side resized to the target size, then centre-cropped."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fspkd.core.errors import FspkdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """Whether a file name has an image suffix and is not hidden (e.g. macOS '._x.jpg' sidecars)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, size: int, source: str) -> np.ndarray:
    """Decode image bytes to an upright RGB uint8 array (size, size, 3); FspkdError naming `source` if unreadable.

    Photos are turned as their EXIF orientation says (as viewers show them); greyscale, 16-bit greyscale, CMYK
    and palette images become RGB.
    """
    if not data:
        raise FspkdError(f"{source}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big photos
                rgb = to_rgb(upright(image))
    except UnidentifiedImageError:  # its own message names an in-memory buffer, not the file
        raise FspkdError(f"{source}: unreadable image (not in an image format Pillow knows)") from None
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        reason = " ".join(str(err).split())  # one line, whatever the library put in its message
        raise FspkdError(f"{source}: unreadable image ({type(err).__name__}: {reason})") from None
    return np.asarray(resize_and_crop(rgb, size))


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says; phones store portraits sideways with that tag.

    A broken EXIF block leaves the image as stored: the pixels are still good, only the hint is lost.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # Pillow raises several types for malformed EXIF data
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any mode; 16- and 32-bit integer greyscale (scientific PNGs, TIFFs) scaled from 16 bits to 8.

    Pillow's own conversion clips those to 255 instead of scaling, which would turn most such images white.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64) / 257  # 65535 -> 255
        return Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


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
