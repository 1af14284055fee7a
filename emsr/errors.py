"""Errors a user can act on.

Every error that reaches the command line as one plain line (no traceback) derives from
`EMSRError`; its message says what is wrong and what to do about it.
"""


class EMSRError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class CheckpointError(EMSRError):
    """A checkpoint directory that is missing, corrupt, tampered with or of another model."""


class DataError(EMSRError):
    """Arrays that the model cannot use: wrong rank, dtype, non-finite values, mismatched sizes."""


class DivergedError(EMSRError):
    """Training whose weights became NaN or infinite: the settings, not the data, are at fault."""


DEBUG_ENV = "EMSR_DEBUG"
"""Environment variable (set by `emsr --debug`) that lets user errors propagate with their
traceback instead of being reduced to one line."""
