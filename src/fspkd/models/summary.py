"""What ``fspkd models`` shows of each registered model: its size and the channel counts at its FSP taps, so that
a user can pick a teacher and student whose FSP matrices match (equal widths at both ends of every section)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fspkd.core.autosections import describe
from fspkd.core.taps import FeatureTaps
from fspkd.models.registry import create, list_models

STARTS = ("before", "after")  # where a section's first map is taken (``SectionedNet.fsp_pairs``)
PROBE_SIZE = 32  # every registered net takes a 32x32 input; channel counts do not depend on the size


class ModelSummary(NamedTuple):
    """A model's parameter count and, per section start, (first, second) channel counts of each FSP pair: empty
    for a model that declares no FSP sections, None where a 32x32 probe could not run it."""

    name: str
    params: int
    widths: dict[str, list[tuple[int, int]]] | None


def summarize(name: str, num_classes: int = 10) -> ModelSummary:
    """Build ``name`` on the meta device (shapes only: no memory, no arithmetic) and read its taps' widths."""
    with torch.device("meta"):
        model = create(name, num_classes=num_classes).eval()
    params = sum(p.numel() for p in model.parameters())
    if not hasattr(model, "fsp_pairs"):
        return ModelSummary(name, params, {})
    pairs = {start: model.fsp_pairs(start) for start in STARTS}
    taps = [tap for start in STARTS for pair in pairs[start] for tap in pair]
    with FeatureTaps(model, taps) as feature_taps, torch.no_grad():
        try:
            model(torch.empty(1, 3, PROBE_SIZE, PROBE_SIZE, device="meta"))
        except Exception:  # a user-registered net may need another input or real data: list it all the same
            return ModelSummary(name, params, None)
        channels = {tap: feature.shape[1] for tap, feature in feature_taps.features.items()}
    widths = {start: [(channels[a], channels[b]) for a, b in pairs[start]] for start in STARTS}
    return ModelSummary(name, params, widths)


def model_table(num_classes: int = 10) -> str:
    """One line per registered model: name, parameters, FSP widths 'start>end' per section, before | after."""
    header = f"{'model':<18} {'params':>12}  FSP taps' channels per section, start>end: before | after"
    lines = [header, f"{'':<18} {f'({num_classes} classes)':>12}"]
    for name in list_models():
        summary = summarize(name, num_classes)
        lines.append(f"{name:<18} {summary.params:>12,}  {_widths_text(summary.widths)}")
    return "\n".join(lines)


def _widths_text(widths: dict[str, list[tuple[int, int]]] | None) -> str:
    if widths is None:
        return f"FSP taps not probed (its forward failed on a {PROBE_SIZE}x{PROBE_SIZE} input)"
    if not widths:
        return "no declared FSP sections"
    return " | ".join(" ".join(f"{a}>{b}" for a, b in widths[start]) for start in STARTS)


def found_sections(name: str, size: int = PROBE_SIZE) -> str:
    """The FSP sections, pairs and hint layer a dry run on a ``size`` x ``size`` input finds in model ``name``
    (what ``fspkd.Distiller`` uses for a model that declares none)."""
    return describe(create(name), torch.randn(2, 3, size, size))
