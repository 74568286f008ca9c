"""What our sectioned networks share: sections of equal spatial size, and the tap points they declare."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.core.taps import parse_tap


class Section(NamedTuple):
    """The tap points of one section: the map entering it, its first block's output, its output; and its number
    of blocks (a section of one block has ``first`` and ``output`` on one tensor)."""

    input: str
    first: str
    output: str
    blocks: int


class SectionedNet(nn.Module):
    """Base of networks made of a stem followed by sections of blocks, each section of one spatial size.

    Subclasses set ``arch`` (the registry name), ``head`` (the classifier's module name, which a features-only
    checkpoint lacks), ``stem_channels`` and ``feature_info``: one dict per section,
    ``{"name": "layer1", "channels": 16, "reduction": 1}`` (``name`` the tap of the section's output; reduction =
    input size / map size, as in timm), so consumers know channel counts and sizes without a forward pass. Sections
    are ``layer1..layerK`` (``nn.Sequential`` of blocks) unless the subclass overrides ``sections``, and pre-ReLU
    taps are the blocks' ``residual`` sums unless it overrides ``pre_relu_tap``.
    """

    arch: str
    head: str
    stem_channels: int
    feature_info: list[dict]

    @property
    def sections(self) -> list[Section]:
        """The taps of each section. This default reads sections ``layer1..layerK`` (``nn.Sequential`` of blocks,
        named in ``feature_info``): a section's input is the previous section's output (one name, and one hook,
        for one tensor), its first map the output of block ``0``. Families laid out otherwise override it."""
        sections, previous = [], None
        for info in self.feature_info:
            name = info["name"]
            start = previous or f"{name}:input"
            sections.append(Section(start, f"{name}.0", name, len(self.get_submodule(name))))
            previous = name
        return sections

    @property
    def section_outputs(self) -> list[str]:
        """The tap of each section's output (FitNet's "3 loss" hints on the CIFAR ResNets)."""
        return [section.output for section in self.sections]

    @property
    def hint_layer(self) -> str:
        """FitNet's single hint / guided layer: the output of the middle section (index K // 2).

        Counted in sections, not layers, so that every net of a family (same K) picks a map of the same size and
        channel count: ``layer2`` of the 3-section CIFAR ResNets, ``layer3`` of the 4-section ImageNet ResNets.
        """
        return self.section_outputs[len(self.section_outputs) // 2]

    @property
    def has_one_block_section(self) -> bool:
        """Whether a section is a single block, whose output is the section's output (ResNet-8)."""
        return any(section.blocks == 1 for section in self.sections)

    def fsp_pairs(self, first: str = "before", pre_relu: bool = False) -> list[tuple[str, str]]:
        """One (first tap, last tap) pair per section, for the FSP matrices G_1..G_K (paper, section 4).

        ``first="before"`` (default) takes a section's first map at the section's *input* (``"layer2:input"``, the
        previous section's output, before the down-sampling block); ``first="after"`` takes it at the first block's
        output (``"layer2.0"``). The second map is always the section's output (``"layer2"``). In a section of one
        block "after" pairs that block's output with itself; the FSP method then takes "before" for both networks
        (``methods.fsp.section_start``).

        "before" is the default because the paper max-pools the larger map to the smaller one: in a ResNet the two
        ends of a section can differ in size only when the first map is taken before the section's down-sampling
        block, so that is the reading under which the paper's pooling ever happens. It gives rectangular matrices
        (e.g. 16 x 32); "after" gives square ones of equal-sized maps.

        ``pre_relu=True`` taps each block's residual sum before its final ReLU (``"layer2.3.residual"``) instead of
        the block's output; the stem output feeding ``layer1`` has no residual sum and stays as it is.
        """
        if first == "before":
            pairs = [(section.input, section.output) for section in self.sections]
        elif first == "after":
            pairs = [(section.first, section.output) for section in self.sections]
        else:
            raise FspkdError(f"fsp_pairs: first must be 'before' or 'after', got {first!r}")
        return [(self.pre_relu_tap(a), self.pre_relu_tap(b)) for a, b in pairs] if pre_relu else pairs

    def fsp_permutation_groups(self, first: str = "before", pre_relu: bool = False) -> dict[str, str]:
        """Tap -> residual stream, for shuffled FSP: the identity shortcuts carry one channel order through a
        whole section, so the taps of one section can only be permuted together (see ``fsp.ChannelShuffle``)."""
        groups = {}
        input_widths = [self.stem_channels] + [info["channels"] for info in self.feature_info[:-1]]
        for (start, end), width, info in zip(self.fsp_pairs(first), input_widths, self.feature_info):
            groups[end] = end
            # an identity shortcut keeps the width: a section input of another width is a stream of its own
            tied = start.startswith(end) and (not parse_tap(start)[1] or width == info["channels"])
            groups.setdefault(start, end if tied else start)
        return {self.pre_relu_tap(tap): group for tap, group in groups.items()} if pre_relu else groups

    def pre_relu_tap(self, tap: str) -> str:
        """The pre-ReLU tap of a block-output tap: ``layer2`` -> its last block's sum (``layer2.2.residual``),
        ``layer2.0`` -> ``layer2.0.residual``; a section input stays as it is."""
        path, takes_input = parse_tap(tap)
        if takes_input:
            return tap
        section, _, block = path.partition(".")
        if not block:
            block = str(len(self.get_submodule(section)) - 1)
        return f"{section}.{block}.residual"


def init_weights(model: nn.Module) -> None:
    """MSRA init (He et al. 2015) of convolutions, fan_out mode for ReLU as torchvision does; BatchNorm 1 and 0.

    fan_out keeps the variance of the gradients constant through the backward pass (fan_in, as in
    pytorch_resnet_cifar10, keeps the activations' variance); both are He et al.'s MSRA init. Linear layers keep
    PyTorch's default init.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
