"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016): depth 6n + 4, pre-activation blocks, widths 16k/32k/64k.

Module names follow the CIFAR distillation benchmarks (RepDistiller's and mdistiller's ``wrn.py``) so their
checkpoints load as they are: stem ``conv1``; sections ``block1..block3``, each holding its blocks in ``layer``
(blocks with ``bn1, conv1, bn2, conv2`` and, where the width changes, ``convShortcut``); final ``bn1`` and ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.models.registry import register_model
from fspkd.models.sections import Section, SectionedNet, init_weights

STEM_CHANNELS = 16


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut; the sum leaves the block without a ReLU.

    Where the width changes, the 1x1 ``convShortcut`` reads the *activated* input (as in the benchmarks' code),
    so the block's BN-ReLU is shared by both paths.
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.convShortcut = None  # camelCase: the benchmarks' key name
        if in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return out + shortcut


class BlockGroup(nn.Module):
    """One section: its blocks under ``layer`` (the benchmarks' ``NetworkBlock``, kept for its key names)."""

    def __init__(self, count: int, in_planes: int, planes: int, stride: int):
        super().__init__()
        blocks = [PreActBlock(in_planes, planes, stride)] + [PreActBlock(planes, planes, 1) for _ in range(count - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(SectionedNet):
    """3x3 stem, three sections of ``n`` pre-activation blocks at strides 1/2/2, BN-ReLU, average pool, fc."""

    head = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int = 10):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise FspkdError(f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got {depth!r}")
        count = (depth - 4) // 6
        channels = [16 * widen, 32 * widen, 64 * widen]
        self.arch = f"wrn_{depth}_{widen}"
        self.stem_channels = STEM_CHANNELS
        self.feature_info = [
            {"name": f"block{i + 1}", "channels": c, "reduction": 2**i} for i, c in enumerate(channels)
        ]
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = STEM_CHANNELS
        for index, planes in enumerate(channels):
            self.add_module(f"block{index + 1}", BlockGroup(count, in_planes, planes, 1 if index == 0 else 2))
            in_planes = planes
        self.bn1 = nn.BatchNorm2d(channels[-1])
        self.fc = nn.Linear(channels[-1], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    @property
    def sections(self) -> list[Section]:
        """Sections ``block1..block3``; their blocks sit one level down, in ``blockK.layer``."""
        sections, previous = [], None
        for info in self.feature_info:
            name = info["name"]
            blocks = len(self.get_submodule(name).layer)
            sections.append(Section(previous or f"{name}:input", f"{name}.layer.0", name, blocks))
            previous = name
        return sections

    def pre_relu_tap(self, tap: str) -> str:
        """Pre-activation blocks end in the residual sum, before any ReLU: every tap already is pre-ReLU."""
        return tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
def wrn_16_1(num_classes: int = 10) -> WideResNet:
    """WRN-16-1 (2 blocks per section, widths 16/32/64): a benchmark student."""
    return WideResNet(16, 1, num_classes)


@register_model
def wrn_16_2(num_classes: int = 10) -> WideResNet:
    """WRN-16-2 (2 blocks per section, widths 32/64/128): a benchmark student."""
    return WideResNet(16, 2, num_classes)


@register_model
def wrn_40_1(num_classes: int = 10) -> WideResNet:
    """WRN-40-1 (6 blocks per section, widths 16/32/64): a benchmark student."""
    return WideResNet(40, 1, num_classes)


@register_model
def wrn_40_2(num_classes: int = 10) -> WideResNet:
    """WRN-40-2 (6 blocks per section, widths 32/64/128): a benchmark teacher."""
    return WideResNet(40, 2, num_classes)
