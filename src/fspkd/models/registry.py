"""One registry of model builders: ``@register_model``, ``create(name, ...)``, ``list_models()``."""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from torch import nn

from fspkd.core.errors import FspkdError
from fspkd.core.imports import is_import_spec, load_object

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``builder(num_classes=..., **options)`` under its function name."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def create(name: str, num_classes: int = 10, **options) -> nn.Module:
    """Build the registered model ``name``, or call the factory ``name`` = ``package.module:function``; unknown
    names and options raise FspkdError."""
    if isinstance(name, str) and is_import_spec(name):
        return _from_factory(name, num_classes, options)
    builder = _BUILDERS.get(name)
    if builder is None:
        raise FspkdError(f"unknown model {name!r}{_nearest(name, list_models())}; valid models: {', '.join(list_models())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FspkdError(f"model {name!r}: num_classes must be a positive integer, got {num_classes!r}")
    valid = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    for option in options:
        if option not in valid:
            raise FspkdError(
                f"model {name!r} has no option {option!r}{_nearest(option, valid)}; "
                f"valid options: {', '.join(valid) or 'none'}"
            )
    return builder(num_classes=num_classes, **options)


def _nearest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_factory(spec: str, num_classes: int, options: dict) -> nn.Module:
    """``factory(num_classes=..., **options)`` (num_classes only if the factory takes it), checked to be a module."""
    factory = load_object(spec, "model")
    if not callable(factory):
        raise FspkdError(f"model {spec!r} is not callable; name a function or class that builds an nn.Module")
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes = "num_classes" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    try:
        model = factory(**({"num_classes": num_classes} if takes else {}), **options)
    except TypeError as err:
        raise FspkdError(f"model {spec!r}: calling it with {options or 'no options'} failed ({err})") from None
    if not isinstance(model, nn.Module):
        raise FspkdError(f"model {spec!r} built a {type(model).__name__}, not an nn.Module")
    return model
