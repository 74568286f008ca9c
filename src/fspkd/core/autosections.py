"""FSP sections of any CNN, found by one dry run instead of declared by the model.

A section is a run of consecutive layers whose outputs keep one spatial size (the paper's definition). The
layers considered are the model's top-level children, with ``nn.Sequential`` / ``nn.ModuleList`` /
``nn.ModuleDict`` containers opened into their children, recursively: a torchvision ResNet gives ``conv1``,
``bn1``, ``relu``, ``maxpool``, ``layer1.0``, ``layer1.1``, ..., ``avgpool``, ``fc``; a timm-style net gives
``stem``, ``stages.0``, ``stages.1``, ... Their outputs are recorded in execution order by forward hooks.

Each section gives one FSP pair, (first map, last map):

- the maps are those of the section's first and last *blocks* (layers that are not a single convolution,
  normalisation, activation, pooling or dropout), so that a stem or a head that keeps the section's size (CIFAR
  ResNets, a final BatchNorm) is not part of the flow; a section made only of single layers (VGG) takes them all;
- the last map is named by the outermost module that returns that very tensor (``layer1`` rather than
  ``layer1.1``);
- a section of one block (a stage not opened into blocks, ResNet-8) pairs that block's input with its output: the
  paper's max pooling brings a larger input down to the output's size.

Sections made only of single layers are dropped when the model has sections with blocks (the stem of an ImageNet
ResNet), as are maps of 1x1 (after global pooling). The hint layer (FitNet) is the middle section's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.core.taps import unwrap

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
SINGLE_LAYERS = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Identity,
                 nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.PReLU,
                 nn.ELU, nn.Mish, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                 nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Dropout,
                 nn.Dropout2d, nn.Flatten, nn.Linear)


@dataclass(frozen=True)
class FoundSection:
    """One section found by the dry run: its layers' paths in order, the pair's taps, and their shapes."""

    layers: tuple[str, ...]
    first: str  # tap of the pair's first map
    last: str  # tap of the pair's last map (the section's output)
    first_shape: tuple[int, ...]  # (channels, height, width)
    last_shape: tuple[int, ...]


def candidate_layers(model: nn.Module, prefix: str = "") -> list[str]:
    """Paths of the layers a section is made of: children, with containers opened (in registration order)."""
    paths = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        paths += candidate_layers(child, path + ".") if isinstance(child, CONTAINERS) else [path]
    return paths


def find_sections(model: nn.Module, example: torch.Tensor) -> list[FoundSection]:
    """The FSP sections of ``model`` on ``example`` (a batch; two images are used), in execution order."""
    model = unwrap(model)
    calls = _dry_run(model, example[:2])
    layers = set(candidate_layers(model))
    order = [c for c in calls.values() if c.path in layers and c.once and _is_map(c.output)]
    groups: list[list[_Call]] = []
    for call in order:
        if groups and groups[-1][-1].output.shape[2:] == call.output.shape[2:]:
            groups[-1].append(call)
        else:
            groups.append([call])
    groups = [g for g in groups if g[-1].output.shape[2:].numel() > 1]
    modules = dict(model.named_modules())
    with_blocks = [g for g in groups if any(not _single(modules[c.path]) for c in g)]
    sections = [_section(g, modules, calls) for g in (with_blocks or groups)]
    if not sections:
        raise FspkdError(f"found no FSP sections in {type(model).__name__}: no layer (a child, or a child of an "
                         "nn.Sequential) outputs a feature map larger than 1x1; name the pairs (pairs=, --fsp-pairs)")
    return sections


def auto_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """One (first tap, last tap) FSP pair per section found in ``model``."""
    return [(s.first, s.last) for s in find_sections(model, example)]


def auto_hint(model: nn.Module, example: torch.Tensor) -> str:
    """FitNet's hint / guided layer: the output of the middle section (index K // 2), as declared models do."""
    sections = find_sections(model, example)
    return sections[len(sections) // 2].last


def describe(model: nn.Module, example: torch.Tensor) -> str:
    """The sections found, one line each: its layers, its pair and the pair's shapes (``fspkd models --pairs``)."""
    sections = find_sections(model, example)
    lines = [f"section {i + 1}: {s.first} {_shape(s.first_shape)} > {s.last} {_shape(s.last_shape)}   "
             f"({len(s.layers)} layers: {s.layers[0]} .. {s.layers[-1]})" for i, s in enumerate(sections)]
    lines.append(f"hint layer (FitNet): {sections[len(sections) // 2].last}")
    return "\n".join(lines)


@dataclass
class _Call:
    path: str
    input: object
    output: object
    once: bool = True


def _dry_run(model: nn.Module, example: torch.Tensor) -> dict[str, _Call]:
    """Each module's first input and output on ``example``, in the order the modules finished (eval mode, no
    gradients, the model's mode restored)."""
    calls: dict[str, _Call] = {}

    def record(path):
        def hook(module, args, output):
            if path in calls:
                calls[path].once = False  # called twice: its tap would hold the last call only
                return
            calls[path] = _Call(path, args[0] if args else None, output)
        return hook

    handles = [m.register_forward_hook(record(path)) for path, m in model.named_modules() if path]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def _section(group: list[_Call], modules: dict[str, nn.Module], calls: dict[str, _Call]) -> FoundSection:
    blocks = [c for c in group if not _single(modules[c.path])] or group
    first, last = blocks[0], blocks[-1]
    if first is last:  # one map: the module's input is the section's first map
        start, first_map = f"{last.path}:input", last.input
    else:
        start, first_map = first.path, first.output
    return FoundSection(tuple(c.path for c in group), start, _outermost(last, calls), tuple(first_map.shape[1:]),
                        tuple(last.output.shape[1:]))


def _outermost(call: _Call, calls: dict[str, _Call]) -> str:
    """The shortest path of a module (an ancestor of ``call``'s) that returned the very same tensor."""
    same = [c.path for c in calls.values() if c.output is call.output and call.path.startswith(c.path + ".")]
    return min(same, key=len, default=call.path)


def _single(module: nn.Module) -> bool:
    return isinstance(module, SINGLE_LAYERS)


def _is_map(output) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)
