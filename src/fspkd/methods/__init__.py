"""Training methods by name: ``plain``, ``fsp``, ``kd``, ``fitnet``, ``copy``."""

from __future__ import annotations

import difflib

from fspkd.core.errors import FspkdError
from fspkd.methods.base import Method
from fspkd.methods.fitnet import FitNet
from fspkd.methods.fsp import FSP
from fspkd.methods.kd import KD
from fspkd.methods.plain import Copy, Plain

METHODS: dict[str, type[Method]] = {m.name: m for m in (Plain, FSP, KD, FitNet, Copy)}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise FspkdError(f"unknown method {name!r}{hint}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
