"""fspkd inside other training frameworks: ``fspkd.integrations.lightning`` (extra ``fspkd[lightning]``).

Each module imports its framework at import time and fails with one line naming the pip command when it is
missing; nothing here is imported by ``import fspkd``.
"""

from fspkd.core.errors import FspkdError


class MissingExtra(FspkdError, ImportError):
    """An optional dependency of an integration is not installed."""


def require(module: str, extra: str):
    """Import ``module`` or raise MissingExtra with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"fspkd's {extra} integration needs {module!r}: pip install 'fspkd[{extra}]'") from None
