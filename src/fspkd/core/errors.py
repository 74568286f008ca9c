"""The one exception type users see: the CLI prints its message as a single line and exits non-zero."""


class FspkdError(Exception):
    """Bad input or configuration, explained in a message that names the file, layer or value at fault."""


class TrainingError(FspkdError):
    """An FspkdError raised while training (a failed checkpoint write, a non-finite loss) rather than by the set-up
    checks: under ``torchrun`` it may be one rank's alone, so that rank does not wait for its peers to leave."""
