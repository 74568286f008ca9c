"""What our ResNets share: sections ``layer1..layerK`` of equal spatial size, and the tap points they declare."""

from __future__ import annotations

from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.core.taps import parse_tap


class SectionedNet(nn.Module):
    """Base of networks made of a stem followed by sections ``layer1..layerK`` (``nn.Sequential`` of blocks).

    Subclasses set ``arch`` (the registry name), ``head`` (the classifier's module name, which a features-only
    checkpoint lacks), ``stem_channels`` and ``feature_info``: one dict per section,
    ``{"name": "layer1", "channels": 16, "reduction": 1}`` (reduction = input size / map size, as in timm), so
    consumers know channel counts and sizes without a forward pass.
    """

    arch: str
    head: str
    stem_channels: int
    feature_info: list[dict]

    @property
    def section_outputs(self) -> list[str]:
        """The tap of each section's output (FitNet's "3 loss" hints on the CIFAR ResNets)."""
        return [info["name"] for info in self.feature_info]

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
        return any(self.section_blocks(name) == 1 for name in self.section_outputs)

    def section_blocks(self, section: str) -> int:
        """Blocks in the section whose output is ``section`` (here a module ``nn.Sequential`` of blocks)."""
        return len(self.get_submodule(section))

    def first_block(self, section: str) -> str:
        """The tap of the section's first block output (``"layer2.0"``)."""
        return f"{section}.0"

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
        sections = self.section_outputs
        if first == "before":
            # a section's input is the previous section's output: one name (and one hook) for one tensor
            starts = [f"{sections[0]}:input"] + sections[:-1]
            pairs = list(zip(starts, sections))
        elif first == "after":
            pairs = [(self.first_block(name), name) for name in sections]
        else:
            raise FspkdError(f"fsp_pairs: first must be 'before' or 'after', got {first!r}")
        return [(self._pre_relu(a), self._pre_relu(b)) for a, b in pairs] if pre_relu else pairs

    def fsp_permutation_groups(self, first: str = "before", pre_relu: bool = False) -> dict[str, str]:
        """Tap -> residual stream, for shuffled FSP: the identity shortcuts carry one channel order through a
        whole section, so the taps of one section can only be permuted together (see ``fsp.ChannelShuffle``)."""
        groups = {}
        for start, end in self.fsp_pairs(first):
            groups[end] = end
            groups.setdefault(start, end if start.startswith(end) else start)
        return {self._pre_relu(tap): group for tap, group in groups.items()} if pre_relu else groups

    def _pre_relu(self, tap: str) -> str:
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
