"""Loading weights people already have (ours, pytorch_resnet_cifar10, torchvision, RepDistiller / mdistiller,
safetensors) and saving ours.

Torch files are only ever read with ``torch.load(..., weights_only=True)``: a checkpoint from elsewhere cannot run
code. Our checkpoints are dicts with the weights under ``"model"`` plus ``"model_name"``, ``"model_options"`` and
``"num_classes"``, enough to rebuild the model (``fspkd.training.inference.model_from_checkpoint``).
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes
from torch import nn

from fspkd.core.atomic import atomic_write
from fspkd.core.errors import FspkdError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
TOLERATED_MISSING_SUFFIX = "num_batches_tracked"  # absent from older checkpoints (pytorch_resnet_cifar10)
SHOWN = 5  # keys listed per kind of mismatch in error messages
# classes a weights-only load may rebuild besides tensors and containers: RepDistiller's final checkpoints
# (``*_last.pth``) store the run's argparse options beside the weights; a Namespace only holds attributes
SAFE_GLOBALS = [argparse.Namespace]


class LoadResult(NamedTuple):
    """Keys left out by a non-strict load (num_batches_tracked not counted)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a torch checkpoint file as a dict, with ``weights_only=True``; FspkdError when unreadable."""
    payload = _torch_load(Path(path))
    if not isinstance(payload, dict):
        raise FspkdError(f"{path}: expected a checkpoint dict, found {type(payload).__name__}")
    return payload


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a ``.safetensors`` or torch file, unwrapped from ``{"state_dict": ...}`` or our
    ``{"model": ...}``, with a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = _safetensors_load(path)
    else:
        state = _unwrap(_torch_load(path), path)
    return _strip_prefixes(state)


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                 head_optional: bool = False) -> LoadResult:
    """Load the weights in ``path`` (see ``load_state_dict_file``) into ``model``.

    Missing ``num_batches_tracked`` buffers are tolerated. Differing shapes always raise FspkdError; missing or
    unexpected keys raise it when ``strict``, and are returned otherwise. ``head_optional`` also accepts a
    features-only file (see ``missing_head``).
    """
    return load_state_dict_checked(model, load_state_dict_file(path), source=str(path), strict=strict,
                                   head_optional=head_optional)


def missing_head(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The keys of the model's classifier (its ``head`` module) when ``state`` has none of them: a feature
    extractor saved without its classifier, such as an ImageNet backbone for transfer learning. Else []."""
    head = getattr(model, "head", None)
    keys = [k for k in model.state_dict() if head and k.startswith(head + ".")]
    return [] if any(k in state for k in keys) else keys


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, strict: bool = True,
    head_optional: bool = False,
) -> LoadResult:
    """``model.load_state_dict(state)`` with an FspkdError that lists what differs, naming model and source.

    With ``head_optional`` a state without any classifier key loads strictly into the rest of the model and the
    classifier keeps its weights; the result's ``missing_keys`` then lists the classifier's keys.
    """
    expected = model.state_dict()
    headless = missing_head(model, state) if head_optional else []
    missing = [k for k in expected if k not in state and not k.endswith(TOLERATED_MISSING_SUFFIX)
               and k not in headless]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes or (strict and (missing or unexpected)):
        model_name = getattr(model, "arch", type(model).__name__)
        raise FspkdError(
            f"cannot load {source} into {model_name}: "
            f"{_listing('missing keys', missing)}; {_listing('unexpected keys', unexpected)}; "
            f"{_listing('differing shapes', shapes)}"
        )
    model.load_state_dict(state, strict=False)
    return LoadResult(missing + headless, unexpected)


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` atomically with ``torch.save``; it must hold only what ``weights_only=True`` reads back
    (tensors, dicts, lists, tuples, numbers, strings, None), else FspkdError and nothing is written."""
    _check_weights_only(payload, "payload")
    atomic_write(path, lambda tmp: _torch_save(payload, tmp), "the checkpoint")


def _torch_save(payload: dict, path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write (a full disk) surfaces as the OSError behind
    torch's RuntimeError ("unexpected pos ...") and ``atomic_write`` can name it."""
    with open(path, "wb") as file:
        torch.save(payload, file)


def save_weights_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write the model's state dict atomically as safetensors; ``metadata`` maps strings to strings."""
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise FspkdError(f"safetensors metadata must map str to str; {key!r}: {value!r} is not")
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), "the weights")


def _torch_load(path: Path):
    if not path.is_file():
        raise FspkdError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a (safe) checkpoint
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
        raise FspkdError(
            f"{path}: not a readable checkpoint (expected a torch.save file that loads with weights_only=True, "
            f"or a .safetensors file): {reason}"
        ) from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FspkdError(f"checkpoint file not found: {path}")
    try:
        return load_safetensors(path, device="cpu")
    except Exception as error:
        raise FspkdError(f"{path}: not a readable safetensors file: {error}") from None


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise FspkdError(f"{path}: expected a state dict (parameter name -> tensor), found {type(obj).__name__}")
    for key, value in obj.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise FspkdError(
                f"{path}: expected a state dict (parameter name -> tensor), "
                f"found entry {key!r} of type {type(value).__name__}"
            )
    return obj


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _listing(what: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
    return f"{len(items)} {what}" + (f" ({shown})" if items else "")


def _check_weights_only(value, where: str) -> None:
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise FspkdError(f"{where}: key {key!r} is a {type(key).__name__}; checkpoint keys must be str or int")
            _check_weights_only(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_weights_only(item, f"{where}[{index}]")
    elif not (isinstance(value, torch.Tensor) or type(value) in (int, float, bool, str, type(None))):
        raise FspkdError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which torch.load(weights_only=True) "
            f"refuses; store tensors, dicts, lists, numbers or strings (e.g. float(x), x.state_dict())"
        )
