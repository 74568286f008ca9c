"""Features of any ``nn.Module`` by module path, through forward hooks (the model's ``forward`` is untouched).

A tap spec names a module by its path in ``model.named_modules()`` and optionally what to take from it:

- ``"layer1.2"``: the output of module ``layer1.2``;
- ``"layer2.0:input"``: the first positional input of module ``layer2.0``.

Stored tensors keep their autograd graph; whether to run under ``torch.no_grad()`` is the caller's choice. A tensor
that a later in-place operation modifies (an ``nn.ReLU(inplace=True)`` after the tapped module) is stored as modified:
tap the module whose output is not overwritten. With DDP, tap the wrapped ``ddp.module``.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import torch
from torch import nn

from fspkd.core.errors import FspkdError


def parse_tap(spec: str) -> tuple[str, bool]:
    """Split a tap spec into ``(module_path, takes_input)``."""
    if not isinstance(spec, str):
        raise FspkdError(f"tap {spec!r}: expected a string such as 'layer1' or 'layer2:input'")
    path, sep, what = spec.partition(":")
    if sep and what != "input":
        raise FspkdError(f"tap {spec!r}: unknown suffix ':{what}'; expected '<module path>' or '<module path>:input'")
    return path, bool(sep)


def find_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, or an FspkdError that lists the closest module paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(n) for n in close)}?" if close else f"the model has {len(names)} modules"
        raise FspkdError(f"no module {path!r} in {type(model).__name__}; {hint}") from None


class FeatureTaps:
    """Forward hooks that store the tapped tensors of each forward pass in ``features`` (keyed by tap spec).

    Usable as a context manager (hooks removed on exit). Each forward pass overwrites the previous tensors; a
    module called several times in one pass keeps its last call's tensor.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str]):
        self.model = model
        self.taps = tuple(dict.fromkeys(taps))  # unique, in order
        self._features: dict[str, torch.Tensor] = {}
        self._handles = []
        for spec in self.taps:
            path, takes_input = parse_tap(spec)
            module = find_module(model, path)
            if takes_input:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(spec)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(spec)))

    def _input_hook(self, spec):
        def hook(module, args):
            if not args:
                raise FspkdError(f"tap {spec!r}: the module was called without a positional input")
            self._features[spec] = args[0]

        return hook

    def _output_hook(self, spec):
        def hook(module, args, output):
            self._features[spec] = output

        return hook

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """The tensors of the latest forward pass, by tap spec (the live dict, not a copy)."""
        return self._features

    def clear(self) -> None:
        """Drop the stored tensors (and the graphs they hold)."""
        self._features.clear()

    def remove(self) -> None:
        """Remove the hooks and drop the stored tensors; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()
