"""ImageNet-style ResNets of BasicBlocks with torchvision's module names, so torchvision state dicts load as is.

Stem ``conv1`` (7x7, stride 2), ``bn1``, ``relu``, ``maxpool``; sections ``layer1..layer4`` at 64/128/256/512
channels of blocks with ``conv1, bn1, conv2, bn2`` and, where the shape changes, ``downsample`` (1x1 conv, BN);
``avgpool``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from fspkd.models.registry import register_model
from fspkd.models.sections import SectionedNet, init_weights

SECTION_CHANNELS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with a non-in-place ReLU so that tapped tensors are never overwritten."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.residual = nn.Identity()  # names the pre-ReLU sum, a tap point (``fsp_pairs(pre_relu=True)``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.residual(out + identity))


class ImageNetResNet(SectionedNet):
    """7x7 stem and max pool (reduction 4), four sections with strides 1/2/2/2, average pool, fc."""

    head = "fc"

    def __init__(self, arch: str, blocks_per_section: tuple[int, int, int, int], num_classes: int = 1000):
        super().__init__()
        self.arch = arch
        self.stem_channels = SECTION_CHANNELS[0]
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": c, "reduction": 4 * 2**i} for i, c in enumerate(SECTION_CHANNELS)
        ]
        self.conv1 = nn.Conv2d(3, self.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.stem_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = self.stem_channels
        for index, (planes, count) in enumerate(zip(SECTION_CHANNELS, blocks_per_section)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(SECTION_CHANNELS[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model
def resnet34(num_classes: int = 10) -> ImageNetResNet:
    """ResNet-34 (3, 4, 6, 3 blocks): the paper's transfer-learning teacher; loads torchvision's weights."""
    return ImageNetResNet("resnet34", (3, 4, 6, 3), num_classes)


@register_model
def resnet20_4stage(num_classes: int = 10) -> ImageNetResNet:
    """The paper's 20-layer transfer-learning student: ResNet-34's layout with 2, 2, 3, 2 blocks."""
    return ImageNetResNet("resnet20_4stage", (2, 2, 3, 2), num_classes)


@register_model
def resnet18(num_classes: int = 10) -> ImageNetResNet:
    """ResNet-18 (2, 2, 2, 2 blocks); loads torchvision's weights."""
    return ImageNetResNet("resnet18", (2, 2, 2, 2), num_classes)
