"""A run's execution history as a test reads it: how often each function ran, and how.

    history = client.history("order-1")
    assert history.count(send_email) == 1
    assert history.outcomes(send_push) == ["died", "resolved"]

Built from the store's log (runner.store.history), so it counts every claim a worker
took, however short, and needs nothing from the functions themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from runner.store import Execution

from .registry import Registry

Target = str | Callable[..., Any]
_DESCENDANT = re.compile(r"(\.\d+)*")  # what child ids add to their root's


class RunHistory:
    """The executions of one run (its root and every descendant), in the order they began."""

    def __init__(self, executions: Sequence[Execution], registry: Registry) -> None:
        self._executions = list(executions)
        self._registry = registry

    def of(self, target: Target) -> list[Execution]:
        """The executions of a function (the function, or its registered name) or of one promise id.

        A string is a promise id when one in this run has it, else a function's name.
        """
        if callable(target):
            name = self._registry.name_of(target)
            return [e for e in self._executions if e.func == name]
        if any(e.promise_id == target for e in self._executions):
            return [e for e in self._executions if e.promise_id == target]
        return [e for e in self._executions if e.func == target]

    def count(self, target: Target) -> int:
        """How many times it was claimed: each attempt of a leaf, each step of a workflow."""
        return len(self.of(target))

    def outcomes(self, target: Target) -> list[str]:
        """How each execution ended, in order ("died", "failed", "resolved", ...)."""
        return [e.outcome for e in self.of(target)]

    def pids(self, target: Target) -> list[int]:
        """The process that ran each execution, in order."""
        return [e.pid for e in self.of(target)]

    def counts(self) -> dict[str, int]:
        """Executions per function name: what an assertion message shows at a glance."""
        found: dict[str, int] = {}
        for e in self._executions:
            found[e.func] = found.get(e.func, 0) + 1
        return found

    def __iter__(self) -> Iterator[Execution]:
        return iter(self._executions)

    def __len__(self) -> int:
        return len(self._executions)

    def __repr__(self) -> str:
        lines = [f"  {e.promise_id} {e.func} attempt {e.attempt} pid {e.pid}: {e.outcome}"
                 for e in self._executions]
        return "RunHistory(\n" + "\n".join(lines) + "\n)"


def in_run(root: str, promise_id: str) -> bool:
    """Whether `promise_id` is the root `root` or one of its descendants (`root.0.3`, ...)."""
    return promise_id.startswith(root) and _DESCENDANT.fullmatch(promise_id, len(root)) is not None
