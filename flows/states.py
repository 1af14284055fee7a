"""User errors as failed flow runs with a one-line message, not as logged tracebacks."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect.states import Failed, State

from emsr.errors import DEBUG_ENV, EMSRError

P = ParamSpec("P")
R = TypeVar("R")


def fail_on_user_error(function: Callable[P, R]) -> Callable[P, R | State]:
    """Turn an `EMSRError` raised by a flow body into a Failed state carrying its message.

    A problem the user can fix is not a crash: the run fails with the one line that says
    what to do, and the command line prints exactly that line.
    """

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | State:
        try:
            return function(*args, **kwargs)
        except EMSRError as error:
            if os.environ.get(DEBUG_ENV):
                raise
            return Failed(message=str(error))

    return wrapper


def run_subflow(flow: Callable[..., object], params: object) -> dict:
    """Run a flow inside another; its failure becomes the parent's one-line `EMSRError`."""
    state = flow(params, return_state=True)
    if not state.is_completed():
        if os.environ.get(DEBUG_ENV):
            state.result()
        raise EMSRError(state.message or f"{getattr(flow, 'name', 'a step')} failed")
    return state.result()
