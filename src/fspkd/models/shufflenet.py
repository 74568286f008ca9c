"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, as the distillation benchmarks define
them (RepDistiller's and mdistiller's ``ShuffleNetv1.py`` / ``ShuffleNetv2.py``, their ``ShuffleV1`` and
``ShuffleV2``; ours ``shufflenetv1`` and ``shufflenetv2``).

Module names follow theirs so their checkpoints load as they are: a 1x1 stem ``conv1``, ``bn1`` (24 channels, no
down-sampling on 32x32 inputs); sections ``layer1..layer3``, each opened by a stride-2 block; ``linear``. V1 blocks
hold ``conv1, bn1, conv2, bn2, conv3, bn3``; V2 sections open with a down-sampling block (``conv1..conv5``,
``bn1..bn5``) followed by basic blocks (``conv1..conv3``, ``bn1..bn3``), and end with ``conv2``, ``bn2`` (1x1 to
1024 channels) before ``linear``. Weights start from this project's MSRA init (the benchmarks keep PyTorch's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.models.registry import register_model
from fspkd.models.sections import SectionedNet, init_weights

STEM_CHANNELS = 24
V1_CHANNELS, V1_BLOCKS, V1_GROUPS = (240, 480, 960), (4, 8, 4), 3
V2_CHANNELS, V2_BLOCKS, V2_LAST = (116, 232, 464), (3, 7, 3), 1024  # ShuffleNetV2 1x


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: [N, g*c, H, W] -> [N, c*g, H, W]. Written without reading
    the shape in Python so that torch.fx traces it (the fast teacher folds BatchNorm on the traced graph)."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def depthwise3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)


def pointwise(in_channels: int, out_channels: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, groups=groups, bias=False)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; added to the input, or (stride 2) concatenated with its
    3x3 average pool; then ReLU. ``out_channels`` counts the new channels only (the concatenation adds the input's).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        mid = out_channels // 4
        # the stem's 24 channels do not split into groups: the first 1x1 of the net is dense, as in the paper
        self.first_groups = 1 if in_channels == STEM_CHANNELS else groups
        self.stride = stride
        self.conv1 = pointwise(in_channels, mid, self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = depthwise3x3(mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = pointwise(mid, out_channels, groups)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.residual = nn.Identity()  # names the pre-ReLU sum (or concatenation), a tap point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            out = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            out = out + x
        return F.relu(self.residual(out))


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both halves of the output computed from the whole input (left: depthwise, 1x1; right: 1x1,
    depthwise, 1x1), concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = depthwise3x3(in_channels, 2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = pointwise(in_channels, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = pointwise(in_channels, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = depthwise3x3(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = pointwise(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2Basic(nn.Module):
    """Stride-1 unit: the first half of the channels passes through, the second goes 1x1, depthwise, 1x1; then
    the halves are concatenated and shuffled."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = pointwise(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = depthwise3x3(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = pointwise(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, through = x.chunk(2, dim=1)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(through)))))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class _CifarShuffleNet(SectionedNet):
    """The 1x1 stem both versions share, and their three sections' declarations."""

    head = "linear"

    def _stem(self, arch: str, channels: tuple[int, int, int]) -> None:
        self.arch = arch
        self.stem_channels = STEM_CHANNELS
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": c, "reduction": 2 ** (i + 1)} for i, c in enumerate(channels)
        ]
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)


class CifarShuffleNetV1(_CifarShuffleNet):
    """ShuffleNet V1 with 3 groups: 1x1 stem, sections of 4/8/4 units at 240/480/960 channels, pool, linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self._stem("shufflenetv1", V1_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (channels, count) in enumerate(zip(V1_CHANNELS, V1_BLOCKS)):
            blocks = [ShuffleV1Block(in_channels, channels - in_channels, 2, V1_GROUPS)]
            blocks += [ShuffleV1Block(channels, channels, 1, V1_GROUPS) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = channels
        self.linear = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class CifarShuffleNetV2(_CifarShuffleNet):
    """ShuffleNet V2 1x: 1x1 stem, sections of a down-sampling unit and 3/7/3 basic units at 116/232/464
    channels, 1x1 conv to 1024, pool, linear."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self._stem("shufflenetv2", V2_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (channels, count) in enumerate(zip(V2_CHANNELS, V2_BLOCKS)):
            blocks = [ShuffleV2Down(in_channels, channels)] + [ShuffleV2Basic(channels) for _ in range(count)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = channels
        self.conv2 = pointwise(in_channels, V2_LAST)
        self.bn2 = nn.BatchNorm2d(V2_LAST)
        self.linear = nn.Linear(V2_LAST, num_classes)
        init_weights(self)

    def pre_relu_tap(self, tap: str) -> str:
        """None: V2 units end in a concatenation and a channel shuffle, with no residual sum before a ReLU."""
        raise FspkdError(f"{self.arch} has no pre-ReLU tap points (its units add no residual); "
                         "use fsp_pre_relu: false with it")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
def shufflenetv1(num_classes: int = 10) -> CifarShuffleNetV1:
    """ShuffleNet V1 (3 groups) for CIFAR: the benchmarks' ``ShuffleV1`` student."""
    return CifarShuffleNetV1(num_classes)


@register_model
def shufflenetv2(num_classes: int = 10) -> CifarShuffleNetV2:
    """ShuffleNet V2 1x for CIFAR: the benchmarks' ``ShuffleV2`` student."""
    return CifarShuffleNetV2(num_classes)
