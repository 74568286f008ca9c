"""The CIFAR distillation benchmarks' 4x-wide ResNets, ``resnet8x4`` and ``resnet32x4`` (depth 6n + 2).

Module names follow RepDistiller's and mdistiller's ``resnet.py`` so their checkpoints load as they are: stem
``conv1``, ``bn1`` (32 channels); sections ``layer1..layer3`` at 64/128/256 channels of BasicBlocks with
``conv1, bn1, conv2, bn2`` and, where the shape changes, ``downsample`` (1x1 conv, BN), as torchvision names
them; ``fc``. Unlike ``cifar_resnet`` (pytorch_resnet_cifar10's names and zero-padding shortcuts), the stem is
narrower than ``layer1``, so ``layer1``'s first block has a projection shortcut too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fspkd.models.imagenet_resnet import BasicBlock
from fspkd.models.registry import register_model
from fspkd.models.sections import SectionedNet, init_weights

STEM_CHANNELS = 32
SECTION_CHANNELS = (64, 128, 256)


class CifarResNetX4(SectionedNet):
    """3x3 stem, three sections of ``n`` blocks at strides 1/2/2, average pool, fc."""

    head = "fc"

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        blocks_per_section = (depth - 2) // 6
        self.arch = f"resnet{depth}x4"
        self.stem_channels = STEM_CHANNELS
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": c, "reduction": 2**i} for i, c in enumerate(SECTION_CHANNELS)
        ]
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_planes = STEM_CHANNELS
        for index, planes in enumerate(SECTION_CHANNELS):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes, 1) for _ in range(blocks_per_section - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.fc = nn.Linear(SECTION_CHANNELS[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
def resnet8x4(num_classes: int = 10) -> CifarResNetX4:
    """ResNet-8x4 (1 block per section): the benchmarks' student of resnet32x4."""
    return CifarResNetX4(8, num_classes)


@register_model
def resnet32x4(num_classes: int = 10) -> CifarResNetX4:
    """ResNet-32x4 (5 blocks per section): the benchmarks' largest CIFAR teacher."""
    return CifarResNetX4(32, num_classes)
