"""Unpickling the official CIFAR python files without letting a crafted pickle run code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy

from fspkd.core.errors import FspkdError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _RECONSTRUCT
    from numpy._core.numeric import _frombuffer as _FROMBUFFER
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _RECONSTRUCT
    from numpy.core.numeric import _frombuffer as _FROMBUFFER


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside ALLOWED_GLOBALS."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes written by Python 3 (``encode(text, 'latin1')``), and
    nothing else: another codec name is refused rather than looked up."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedGlobal(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin-1")


# The globals pickled numpy arrays need, and nothing else: the official (Python 2) CIFAR files use the first four;
# pickles written by Python 3 with protocol 2 store bytes as _codecs.encode(str, 'latin1'), and protocol 5
# (Python 3.14's default) stores arrays as _frombuffer(bytes, dtype, shape, order).
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy", "dtype"): numpy.dtype,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_encode,
}


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
