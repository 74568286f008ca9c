"""MobileNetV2 for CIFAR as the distillation benchmarks define it (RepDistiller's and mdistiller's
``mobilenetv2.py``; our ``mobilenetv2_cifar`` is their ``mobile_half``: expansion 6, width multiplier 0.5).

Module names follow theirs so their checkpoints load as they are: stem ``conv1`` (conv3x3 stride 2, BN, ReLU at
indices 0, 1, 2); ``blocks.0..blocks.6``, one ``nn.Sequential`` of inverted residuals per row of the MobileNetV2
table, each block's layers in ``conv`` (1x1 expand, BN, ReLU, 3x3 depthwise, BN, ReLU, 1x1 project, BN);
``conv2`` (1x1 to 1280, BN, ReLU); ``classifier.0`` (linear).
"""

from __future__ import annotations

import torch
from torch import nn

from fspkd.models.mobilenetv2 import InvertedResidual, conv_bn
from fspkd.models.registry import register_model
from fspkd.models.sections import Section, SectionedNet, init_weights

# (expansion or None for the net's, output channels at width 1, blocks, first stride): MobileNetV2's table, with
# the stride of its second row set to 1 for 32x32 inputs, as the benchmarks do
ROWS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2),
        (None, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# the rows each FSP section spans: rows of one spatial size (16, 8, 4 and 2 px on a 32x32 input)
SECTION_ROWS = ((0, 1), (2,), (3, 4), (5, 6))


class CifarMobileNetV2(SectionedNet):
    """Stride-2 stem, seven rows of inverted residuals, 1x1 conv to 1280 channels, average pool, linear."""

    head = "classifier"

    def __init__(self, num_classes: int = 10, expansion: int = 6, width: float = 0.5):
        super().__init__()
        self.arch = "mobilenetv2_cifar"
        channels = [int(c * width) for _, c, _, _ in ROWS]
        self.stem_channels = int(STEM_CHANNELS * width)
        self.conv1 = nn.Sequential(*conv_bn(3, self.stem_channels, 3, 2, act=nn.ReLU))
        self.blocks = nn.ModuleList()
        in_channels = self.stem_channels
        for (row_expansion, _, count, stride), out_channels in zip(ROWS, channels):
            row = []
            for index in range(count):
                row.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1,
                                            row_expansion or expansion, act=nn.ReLU, always_expand=True))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*row))
        last = int(LAST_CHANNELS * width) if width > 1.0 else LAST_CHANNELS
        self.conv2 = nn.Sequential(*conv_bn(in_channels, last, 1, act=nn.ReLU))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.feature_info = [
            {"name": f"blocks.{rows[-1]}", "channels": channels[rows[-1]], "reduction": 2 * 2**i}
            for i, rows in enumerate(SECTION_ROWS)
        ]
        init_weights(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    @property
    def sections(self) -> list[Section]:
        """Sections of rows of one spatial size; a section's input is the previous section's output (the stem's
        output for the first), its first map the output of its first block."""
        sections, previous = [], "blocks.0:input"
        for rows in SECTION_ROWS:
            first = f"blocks.{rows[0]}.0"
            blocks = sum(len(self.blocks[row]) for row in rows)
            sections.append(Section(previous, first, f"blocks.{rows[-1]}", blocks))
            previous = f"blocks.{rows[-1]}"
        return sections

    def pre_relu_tap(self, tap: str) -> str:
        """Inverted residuals end in a linear projection (plus the shortcut), no ReLU: every tap is pre-ReLU."""
        return tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for row in self.blocks:
            out = row(out)
        out = self.conv2(out)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@register_model
def mobilenetv2_cifar(num_classes: int = 10) -> CifarMobileNetV2:
    """MobileNetV2 for CIFAR, expansion 6 and width 0.5: the benchmarks' ``mobile_half`` student."""
    return CifarMobileNetV2(num_classes)
