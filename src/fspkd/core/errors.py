"""The one exception type users see: the CLI prints its message as a single line and exits non-zero."""


class FspkdError(Exception):
    """Bad input or configuration, explained in a message that names the file, layer or value at fault."""
