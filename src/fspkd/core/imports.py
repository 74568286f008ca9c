"""Objects named ``package.module:attribute`` on the command line (model factories, data sets)."""

from __future__ import annotations

import importlib
import os
import sys

from fspkd.core.errors import FspkdError


def is_import_spec(text: str) -> bool:
    """Whether ``text`` names an object as ``module:attribute`` (a registry name has no colon)."""
    module, sep, attribute = text.partition(":")
    return bool(sep and module and attribute)


def load_object(spec: str, what: str):
    """The object ``spec`` = ``package.module:attribute`` names (attribute may be dotted); the working folder
    is importable, as under ``python -m``. ``what`` names the setting in error messages."""
    module_name, sep, attribute = spec.partition(":")
    if not (sep and module_name and attribute):
        raise FspkdError(f"{what} {spec!r}: expected 'package.module:attribute'")
    if os.getcwd() not in sys.path:  # the `fspkd` script's sys.path lacks it; `python -m fspkd` has it
        sys.path.append(os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise FspkdError(f"{what} {spec!r}: cannot import {module_name!r} ({err})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise FspkdError(f"{what} {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target
