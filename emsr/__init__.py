"""EMSR: the network, its training and its checkpoints.

The user-facing entry points are importable from the package itself::

    import emsr
    model = emsr.build_model("small", scale=2)      # an untrained network
    model = emsr.load_checkpoint("checkpoints/run")  # a trained one, in eval mode

They are imported on first use, so `import emsr.errors` (the command line's `--help`) does
not pay for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emsr.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from emsr.network import build_model

_HOMES = {
    "build_model": "emsr.network",
    "load_checkpoint": "emsr.checkpoint",
    "read_checkpoint": "emsr.checkpoint",
    "save_checkpoint": "emsr.checkpoint",
}
__all__ = ["build_model", "load_checkpoint", "read_checkpoint", "save_checkpoint"]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'emsr' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
