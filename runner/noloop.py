"""The event loop a workflow step sees: any use of it is a clear error, not a scheduled task.

A workflow is a coroutine the worker steps by hand inside its own loop's thread, and
durable only through ctx handles. Called there, asyncio.gather would wrap its arguments
in tasks on the worker's real loop, asyncio.sleep would set a real timer, and only the
yield that follows would be refused. Set as the running loop for the step, NO_LOOP
turns the first thing asyncio asks of it into an error naming the durable equivalent.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, NoReturn

from .errors import AsyncioInWorkflow

_ASYNCIO = Path(asyncio.__file__).parent


class _NoLoop:
    def __getattr__(self, name: str) -> NoReturn:
        raise AsyncioInWorkflow.called(_asyncio_caller(), name)

    def __repr__(self) -> str:
        return "<no event loop: a workflow awaits ctx handles only>"


def _asyncio_caller() -> str:
    """The asyncio function the workflow called: the outermost asyncio frame on the stack."""
    name, frame = "", sys._getframe(2)
    while frame is not None:
        if Path(frame.f_code.co_filename).parent == _ASYNCIO:
            name = frame.f_code.co_name
        elif name:
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return name


NO_LOOP: Any = _NoLoop()
