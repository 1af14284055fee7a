"""Errors of the volume and block layer; all are `EMSRError`s, so the CLI shows one line."""

from emsr.errors import EMSRError


class VolumeError(EMSRError):
    """A volume URL that cannot be opened, created or written as asked."""


class PlanError(EMSRError):
    """Block, chunk or ROI settings that cannot make a valid plan."""


class LedgerError(EMSRError):
    """An output whose done-ledger belongs to another configuration."""


class ClusterError(EMSRError):
    """A Dask cluster that cannot be started or reached."""


class BlockFailedError(EMSRError):
    """Blocks that still failed after their bounded retries; `failed` lists each of them."""

    def __init__(self, message: str, failed: list | None = None) -> None:
        super().__init__(message)
        self.failed = failed or []

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.failed))
