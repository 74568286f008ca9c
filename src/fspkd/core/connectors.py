"""Connectors: learnable adapters that make a student's FSP matrices comparable with a teacher's of other widths.

An FSP matrix is (m, n) for a pair whose maps have m and n channels, so a student narrower or wider than its teacher gives
matrices of another shape than the targets. A connector maps each student tap whose width differs from the
teacher tap at the same place to the teacher's width; taps of equal width are left as they are. Two designs:

* ``conv1x1``: a 1x1 convolution and a BatchNorm on the student's feature map, before Eq. 1 (as FitNet's
  regressors, with a BatchNorm so that the mapped maps have a scale of their own to learn);
* ``linear``: a learned (c_t, c_s) matrix M per tap, applied to the student's FSP matrix on both sides,
  G' = M_first G M_second^T. Without the BatchNorm and without max pooling this is what a 1x1 convolution of the
  maps gives (Eq. 1 is bilinear in the two maps), but it acts on the small matrices, not on the maps.

One connector serves each (student tap, teacher tap) correspondence, so a tap that ends one pair and starts the
next is mapped alike in both. Connectors are trained in stage 1 with the student (``FSP.extra_modules``) and are
no part of the student afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from fspkd.core.config import FSP_CONNECTORS
from fspkd.core.fsp import fsp_matrix

DEFAULT_DESIGN = "linear"  # what "auto" builds: as accurate as conv1x1 within the seeds' spread, far cheaper (docs)

Pair = tuple[str, str]


class Conv1x1(nn.Module):
    """A 1x1 convolution and BatchNorm from the student's channels to the teacher's, on the feature map."""

    acts_on = "maps"

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Linear(nn.Module):
    """A learned (teacher channels, student channels) matrix M for one side of an FSP matrix: ``forward(g)`` maps
    the rows (M g), ``forward(g, side="columns")`` the columns (g M^T). Initialised as a 1x1 convolution's
    weight of that shape is, so both designs start from maps of one scale."""

    acts_on = "matrices"

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(teacher_channels, student_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, g: torch.Tensor, side: str = "rows") -> torch.Tensor:
        with torch.autocast(g.device.type, enabled=False):  # the matrices stay float32 under bf16 / fp16 runs
            weight = self.weight.float()
            return torch.matmul(weight, g) if side == "rows" else torch.matmul(g, weight.t())


DESIGNS: dict[str, type[nn.Module]] = {"conv1x1": Conv1x1, "linear": Linear}
assert set(DESIGNS) == set(FSP_CONNECTORS) - {"none", "auto"}, "config.FSP_CONNECTORS names the designs"


def design_name(setting: str) -> str:
    """The design a ``fsp_connector`` setting builds ("auto": the measured default)."""
    return DEFAULT_DESIGN if setting == "auto" else setting


class Connectors(nn.Module):
    """The connectors of one student/teacher pair of networks, one per student tap whose width differs.

    ``widths`` maps each (student tap, teacher tap) correspondence to its (student, teacher) channel counts. The
    modules are kept in a ModuleList in sorted order of the correspondences (tap names hold dots, which module
    names may not), so that a checkpoint's keys do not depend on the order the pairs were listed in.
    """

    def __init__(self, design: str, widths: Mapping[Pair, tuple[int, int]]):
        super().__init__()
        self.design = design
        self.links = sorted(link for link, (s, t) in widths.items() if s != t)
        self.adapters = nn.ModuleList(DESIGNS[design](*widths[link]) for link in self.links)
        self._index = {link: i for i, link in enumerate(self.links)}

    def _adapter(self, student_tap: str, teacher_tap: str) -> nn.Module | None:
        index = self._index.get((student_tap, teacher_tap))
        return None if index is None else self.adapters[index]

    def matrices(self, features: Mapping[str, torch.Tensor], student_pairs: Sequence[Pair],
                 teacher_pairs: Sequence[Pair]) -> list[torch.Tensor]:
        """The student's FSP matrices of ``features`` in the teacher's shapes, one per pair (float32)."""
        return [self._matrix(features, s_pair, t_pair) for s_pair, t_pair in zip(student_pairs, teacher_pairs)]

    def _matrix(self, features, s_pair: Pair, t_pair: Pair) -> torch.Tensor:
        first = self._adapter(s_pair[0], t_pair[0])
        second = self._adapter(s_pair[1], t_pair[1])
        a, b = features[s_pair[0]], features[s_pair[1]]
        if DESIGNS[self.design].acts_on == "maps":
            return fsp_matrix(a if first is None else first(a), b if second is None else second(b))
        g = fsp_matrix(a, b)
        g = g if first is None else first(g)
        return g if second is None else second(g, side="columns")


def tap_widths(student_pairs: Sequence[Pair], teacher_pairs: Sequence[Pair], student_g, teacher_g
               ) -> dict[Pair, tuple[int, int]]:
    """(student tap, teacher tap) -> (student, teacher) channel counts, read off one batch's FSP matrices."""
    widths: dict[Pair, tuple[int, int]] = {}
    for s_pair, t_pair, gs, gt in zip(student_pairs, teacher_pairs, student_g, teacher_g):
        widths[(s_pair[0], t_pair[0])] = (gs.shape[1], gt.shape[1])
        widths[(s_pair[1], t_pair[1])] = (gs.shape[2], gt.shape[2])
    return widths
