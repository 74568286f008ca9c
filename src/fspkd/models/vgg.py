"""VGG with BatchNorm for CIFAR, as the distillation benchmarks define it: five conv blocks, no FC layers.

Module names follow RepDistiller's and mdistiller's ``vgg.py`` (their ``vgg8_bn``, ``vgg11_bn``, ``vgg13_bn``,
registered there as ``vgg8``, ``vgg11``, ``vgg13``) so their checkpoints load as they are: blocks
``block0..block4``, each an ``nn.Sequential`` of (conv3x3 with bias, BN, ReLU) at indices 0, 1, 2, 3, 4, 5, ...;
``classifier`` (one linear layer on 512 channels).

Their blocks drop the last ReLU and apply it in ``forward``; ours keep it as the block's last module, which holds
no weights (the keys are the same) and makes the block's output the activated map, a tap point. On a 32x32 input
the benchmarks skip the max pool after ``block3`` (they use it only on 64x64 inputs); so does this CIFAR variant,
always: ``block3`` and ``block4`` both work at 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from fspkd.models.registry import register_model
from fspkd.models.sections import Section, SectionedNet, init_weights

# convolution widths of block0..block4 (the benchmarks' configurations "S", "A", "B")
CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}
POOLED_BLOCKS = 3  # a 2x2 max pool follows block0, block1 and block2


def conv_block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """(conv3x3 with bias, BN, ReLU) per width; non-in-place ReLUs, so a tapped BN output is never overwritten."""
    layers = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(SectionedNet):
    """``block0`` (the stem), then sections ``block1..block4``, each entered through a max pool except the last,
    global average pool, linear classifier."""

    head = "classifier"

    def __init__(self, arch: str, num_classes: int = 10):
        super().__init__()
        config = CONFIGS[arch]
        self.arch = arch
        self.stem_channels = config[0][-1]
        self.feature_info = [
            {"name": f"block{i}", "channels": config[i][-1], "reduction": 2 ** min(i, POOLED_BLOCKS)}
            for i in range(1, len(config))
        ]
        in_channels = 3
        for index, widths in enumerate(config):
            self.add_module(f"block{index}", conv_block(in_channels, widths))
            in_channels = widths[-1]
        self.pools = nn.ModuleList(nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(POOLED_BLOCKS))
        self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the benchmarks: MSRA (fan_out) convolutions with zero biases, classifier N(0, 0.01) and zero bias."""
        init_weights(self)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def sections(self) -> list[Section]:
        """Sections ``block1..block4``: a section's input is the block's own (pooled) input, of the block's
        spatial size; its first map is the first convolution's ReLU (index 2)."""
        names = [info["name"] for info in self.feature_info]
        return [Section(f"{name}:input", f"{name}.2", name, len(self.get_submodule(name)) // 3) for name in names]

    def pre_relu_tap(self, tap: str) -> str:
        """A block's output -> its last BN (before the last ReLU); the first ReLU (``.2``) -> the first BN (``.1``);
        section inputs stay as they are."""
        for section in self.sections:
            if tap == section.output:
                return f"{tap}.{len(self.get_submodule(tap)) - 2}"
            if tap == section.first:
                return f"{section.output}.1"
        return tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(len(CONFIGS[self.arch])):
            x = self.get_submodule(f"block{index}")(x)
            if index < POOLED_BLOCKS:
                x = self.pools[index](x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model
def vgg8(num_classes: int = 10) -> CifarVGG:
    """VGG-8 with BN (one conv per block): the benchmarks' student of vgg13."""
    return CifarVGG("vgg8", num_classes)


@register_model
def vgg11(num_classes: int = 10) -> CifarVGG:
    """VGG-11 with BN (1, 1, 2, 2, 2 convs per block)."""
    return CifarVGG("vgg11", num_classes)


@register_model
def vgg13(num_classes: int = 10) -> CifarVGG:
    """VGG-13 with BN (two convs per block): a benchmark teacher."""
    return CifarVGG("vgg13", num_classes)
