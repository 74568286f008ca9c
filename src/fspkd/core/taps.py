"""Features of any ``nn.Module`` by module path, through forward hooks (the model's ``forward`` is untouched).

A tap spec names a module by its path in ``model.named_modules()`` and optionally what to take from it:

- ``"layer1.2"``: the output of module ``layer1.2``;
- ``"layer2.0:input"``: the first positional input of module ``layer2.0``.

Stored tensors keep their autograd graph; whether to run under ``torch.no_grad()`` is the caller's choice. A tensor
that a later in-place operation modifies (an ``nn.ReLU(inplace=True)`` after the tapped module) is stored as modified:
tap the module whose output is not overwritten.

A model wrapped by DDP (or DataParallel) or by ``torch.compile`` is tapped inside its wrapper: the hooks go on the
wrapped network and a path may name a module with or without the wrapper's ``module.`` / ``_orig_mod.`` prefix.
A path copied from either model's ``named_modules()`` thus finds the same module.
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


WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefix(spec: str) -> str:
    """A tap spec with any leading wrapper prefixes (``module.``, ``_orig_mod.``) removed."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if spec.startswith(prefix):
                spec, stripped = spec[len(prefix):], True
    return spec


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
        wrapped = unwrap(model) is not model
        self.model = unwrap(model)
        # a prefixed spec stays the key of its features, so callers look them up by the name they gave
        self.taps = tuple(dict.fromkeys(taps))  # unique, in order
        self._features: dict[str, torch.Tensor] = {}
        self._handles = []
        for spec in self.taps:
            path, takes_input = parse_tap(spec)
            module = find_module(self.model, strip_wrapper_prefix(path) if wrapped else path)
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
