"""CIFAR ResNets of depth 6n + 2 (He et al. 2016, section 4.2), post-activation BasicBlocks.

Module names follow pytorch_resnet_cifar10 (Idelbayev) so its checkpoints load: ``conv1``, ``bn1``,
``layer1..layer3`` of blocks with ``conv1, bn1, conv2, bn2, shortcut``, and ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.models.registry import register_model
from fspkd.models.sections import SectionedNet, init_weights

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A: parameter-free shortcut; sub-samples by 2 and zero-pads the new channels evenly on both sides.

    With ``out = 2 * in`` this pads ``out // 4`` on each side, exactly pytorch_resnet_cifar10's LambdaLayer.
    """

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def projection_shortcut(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    """Option B: 1x1 convolution (with the block's stride) and BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Sequential()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_planes, planes)
        else:
            self.shortcut = projection_shortcut(in_planes, planes, stride)
        self.residual = nn.Identity()  # names the pre-ReLU sum, a tap point (``fsp_pairs(pre_relu=True)``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.residual(out + self.shortcut(x)))


class CifarResNet(SectionedNet):
    """3x3 stem, three sections of ``n`` blocks at 16w/32w/64w channels and strides 1/2/2, average pool, linear."""

    head = "linear"

    def __init__(self, depth: int, num_classes: int = 10, width: int = 1, shortcut: str = "A"):
        super().__init__()
        _check_options(depth, width, shortcut)
        blocks_per_section = (depth - 2) // 6
        channels = [16 * width, 32 * width, 64 * width]
        self.arch = f"resnet{depth}"
        self.stem_channels = channels[0]
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": c, "reduction": 2**i} for i, c in enumerate(channels)
        ]
        self.conv1 = nn.Conv2d(3, self.stem_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.stem_channels)
        in_planes = self.stem_channels
        for index, planes in enumerate(channels):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride, shortcut)]
            blocks += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks_per_section - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.linear = nn.Linear(channels[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _check_options(depth: int, width: int, shortcut: str) -> None:
    if depth < 8 or (depth - 2) % 6:
        raise FspkdError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise FspkdError(f"resnet{depth}: width must be a positive integer (channel multiplier), got {width!r}")
    if shortcut not in SHORTCUTS:
        raise FspkdError(f"resnet{depth}: shortcut must be 'A' (zero-padding) or 'B' (1x1 conv), got {shortcut!r}")


@register_model
def resnet8(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-8 (1 block per section): the paper's CIFAR-10 minimization student."""
    return CifarResNet(8, num_classes, width, shortcut)


@register_model
def resnet14(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-14 (2 blocks per section): the paper's Figure 2 and CIFAR-100 minimization student."""
    return CifarResNet(14, num_classes, width, shortcut)


@register_model
def resnet20(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per section), 0.27M parameters at width 1."""
    return CifarResNet(20, num_classes, width, shortcut)


@register_model
def resnet26(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-26 (4 blocks per section): the paper's CIFAR-10 teacher."""
    return CifarResNet(26, num_classes, width, shortcut)


@register_model
def resnet32(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per section): the paper's CIFAR-100 net (with width=4)."""
    return CifarResNet(32, num_classes, width, shortcut)


@register_model
def resnet44(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per section)."""
    return CifarResNet(44, num_classes, width, shortcut)


@register_model
def resnet56(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per section)."""
    return CifarResNet(56, num_classes, width, shortcut)


@register_model
def resnet110(num_classes: int = 10, width: int = 1, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per section)."""
    return CifarResNet(110, num_classes, width, shortcut)
