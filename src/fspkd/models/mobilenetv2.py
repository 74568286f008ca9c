"""ImageNet-style MobileNetV2 (Sandler et al. 2018) with the module names of the common 2018 PyTorch ports.

``features.0`` is the stem (3x3 conv, stride 2, BN, ReLU6), ``features.1 .. features.N`` the inverted-residual
blocks (``conv.*``: 1x1 expand, depthwise 3x3, 1x1 linear projection, each with BN), the last entry of
``features`` a 1x1 conv to 1280 channels, then average pooling and ``classifier`` (dropout, linear). These names
let an ImageNet feature extractor saved as ``features.*`` (no classifier) load as is, leaving the classifier
fresh for the new task.

FSP sections are the runs of blocks that keep one spatial size (five at any input size that is a multiple of
32), each ending at its last inverted-residual block; the final 1x1 conv is a per-pixel projection, left out like
the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.core.taps import parse_tap
from fspkd.models.registry import register_model
from fspkd.models.sections import Section, SectionedNet, init_weights

# (expansion t, channels c, blocks n, first stride s) of each stage, as in the paper's Table 2
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_BLOCKS = tuple(stage[2] for stage in STAGES)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


def divisible(channels: float, divisor: int = 8) -> int:
    """Round a width-scaled channel count to a multiple of 8 without losing more than 10% (the reference rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU6) -> list[nn.Module]:
    """Conv (no bias), BN and optionally an activation (ReLU6 here, ReLU in the CIFAR benchmarks' variant): the
    unit every part of the network is made of.

    The activation is not in place, so that a tapped tensor is never overwritten by the next module.
    """
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    return layers + [act()] if act else layers


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3 with the stride, linear 1x1 projection; residual add when the shape is kept. No
    activation after the projection: the block's output is its own pre-activation map. The expansion is skipped
    at t = 1 as torchvision does, unless ``always_expand`` (the CIFAR benchmarks expand to an equal width)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int,
                 act: type[nn.Module] = nn.ReLU6, always_expand: bool = False):
        super().__init__()
        hidden = in_channels * expansion
        layers = conv_bn(in_channels, hidden, 1, act=act) if expansion != 1 or always_expand else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act)
        layers += conv_bn(hidden, out_channels, 1, act=None)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(SectionedNet):
    """Stem, seven stages of inverted-residual blocks (``blocks`` per stage), 1x1 head conv, pool, classifier."""

    head = "classifier"

    def __init__(self, arch: str, num_classes: int, width: float = 1.0, blocks=IMAGENET_BLOCKS):
        super().__init__()
        width, blocks = _check_options(arch, width, blocks)
        self.arch = arch
        self.stem_channels = divisible(STEM_CHANNELS * width)
        layers: list[nn.Module] = [nn.Sequential(*conv_bn(3, self.stem_channels, 3, stride=2))]
        in_channels, reduction = self.stem_channels, 2
        self.section_indices: list[list[int]] = []  # indices into ``features`` of each equal-size section's blocks
        self.feature_info = []
        for (expansion, channels, _, stride), count in zip(STAGES, blocks):
            out_channels = divisible(channels * width)
            if stride > 1 or not self.section_indices:
                self.section_indices.append([])
                self.feature_info.append({})
                reduction *= stride
            for index in range(count):
                layers.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expansion))
                self.section_indices[-1].append(len(layers) - 1)
                in_channels = out_channels
            self.feature_info[-1] = {"name": f"features.{len(layers) - 1}", "channels": out_channels,
                                     "reduction": reduction}
        # the reference keeps 1280 head channels for width < 1, so thin students still end in a wide embedding
        self.head_channels = divisible(HEAD_CHANNELS * max(1.0, width))
        layers.append(nn.Sequential(*conv_bn(in_channels, self.head_channels, 1)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.head_channels, num_classes))
        init_weights(self)
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)  # a small fresh head, as the reference initialises it
        nn.init.zeros_(self.classifier[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(out, 1))

    @property
    def sections(self) -> list[Section]:
        """Sections are index ranges of ``features``, not modules of their own; a section's input is the previous
        section's output (one name, one hook, for one tensor)."""
        sections, previous = [], None
        for indices, info in zip(self.section_indices, self.feature_info):
            start = previous or f"features.{indices[0]}:input"
            sections.append(Section(start, f"features.{indices[0]}", info["name"], len(indices)))
            previous = info["name"]
        return sections

    def fsp_permutation_groups(self, first: str = "before", pre_relu: bool = False) -> dict[str, str]:
        """Tap -> residual stream, for shuffled FSP: a stream starts at a block without a residual add and runs
        through the residual blocks after it, which all carry its channel order."""
        groups = {}
        for tap in dict.fromkeys(t for pair in self.fsp_pairs(first) for t in pair):
            path, takes_input = parse_tap(tap)
            index = int(path.rpartition(".")[2])
            while not takes_input and getattr(self.features[index], "use_residual", False):
                index -= 1
            groups[tap] = tap if takes_input else f"features.{index}"
        return groups

    def pre_relu_tap(self, tap: str) -> str:
        """MobileNetV2 blocks end in a linear projection (no activation): every block tap is pre-activation."""
        return tap


def _check_options(arch: str, width, blocks) -> tuple[float, tuple[int, ...]]:
    """``width`` a positive number; ``blocks`` 7 positive ints, as a sequence or a string '1,2,3,4,3,3,1'."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise FspkdError(f"{arch}: width must be a positive number (channel multiplier, e.g. 0.5), got {width!r}")
    parsed = blocks
    if isinstance(blocks, str):  # from the command line: --model-option blocks=1,1,2,2,2,1,1
        try:
            parsed = [int(part) for part in blocks.split(",")]
        except ValueError:
            parsed = None
    if not (isinstance(parsed, (list, tuple)) and len(parsed) == len(STAGES)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in parsed)):
        raise FspkdError(f"{arch}: blocks must be {len(STAGES)} positive integers (blocks per stage, e.g. "
                         f"{','.join(map(str, IMAGENET_BLOCKS))}), got {blocks!r}")
    return float(width), tuple(parsed)


@register_model
def mobilenetv2(num_classes: int = 10, width: float = 1.0, blocks=IMAGENET_BLOCKS) -> MobileNetV2:
    """ImageNet MobileNetV2 (blocks 1,2,3,4,3,3,1): a transfer-learning teacher; its ``features`` load the
    ImageNet feature extractors saved as ``features.*``. Fewer ``blocks`` per stage make its students."""
    return MobileNetV2("mobilenetv2", num_classes, width, blocks)
