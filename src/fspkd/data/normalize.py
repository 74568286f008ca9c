"""Choosing the per-channel normalisation (mean, std) applied to images in [0, 1]."""

from __future__ import annotations

from fspkd.core.errors import FspkdError
from fspkd.data.sets import Splits

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
USAGE = "expected 'dataset', 'imagenet', 'none' or explicit 'R,G,B:R,G,B' (mean:std)"


def parse_normalize(text: str, splits: Splits) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) named by `text`: 'dataset' (the training split's statistics, also for an empty text),
    'imagenet', 'none' (mean 0, std 1) or explicit 'R,G,B:R,G,B'; FspkdError quoting `text` otherwise."""
    choice = text.strip().lower()
    if choice in ("", "dataset"):
        return tuple(splits.mean), tuple(splits.std)
    if choice == "imagenet":
        return IMAGENET
    if choice == "none":
        return IDENTITY
    return _parse_explicit(text)


def _parse_explicit(text: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    parts = text.split(":")
    if len(parts) != 2:
        raise FspkdError(f"normalisation {text!r}: {USAGE}")
    mean, std = (_three_floats(part, text) for part in parts)
    if any(value <= 0 for value in std):
        raise FspkdError(f"normalisation {text!r}: std values must be positive")
    return mean, std


def _three_floats(part: str, text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(item) for item in part.split(","))
    except ValueError:
        raise FspkdError(f"normalisation {text!r}: {USAGE}") from None
    if len(values) != 3 or any(value != value or value in (float("inf"), float("-inf")) for value in values):
        raise FspkdError(f"normalisation {text!r}: {USAGE}")
    return values
