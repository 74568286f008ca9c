"""Unpickling the official CIFAR python files without letting a crafted pickle run code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy

from fspkd.core.errors import FspkdError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _RECONSTRUCT
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _RECONSTRUCT

# The globals a pickled numpy array needs; the official CIFAR files contain nothing else.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy", "dtype"): numpy.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside ALLOWED_GLOBALS."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only ALLOWED_GLOBALS and refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def load_pickle(data: bytes, source: str | Path):
    """Unpickle `data` (read from `source`, named in errors) allowing only numpy array reconstruction.

    Python 2 strings come back as bytes, as in the official files (dict keys like b'data').
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as refused:
        raise FspkdError(f"{source}: refused to unpickle global {refused}; "
                         "only numpy arrays are allowed in a CIFAR python file") from None
    except Exception as err:  # a corrupt pickle can raise almost anything
        raise FspkdError(f"{source}: not a readable CIFAR python pickle ({type(err).__name__}: {err})") from None
