"""Replay compares what is stored: a child's function and its arguments as encoded bytes.

Driven without processes: a Context is given the children a store would record, and a
workflow coroutine is stepped by hand as the worker steps it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest

from runner.context import Context
from runner.errors import NonDeterminism
from runner.registry import Registry
from runner.store import Promise, State, normalize
from runner.workflow import Failed, Finished, WorkflowRun


def recorded(*children: tuple[str, list[Any]]) -> list[Promise]:
    """Settled children of "wf" as the store holds them (arguments normalized)."""
    return [Promise(f"wf.{i}", State.RESOLVED, func, normalize(args), "wf", {}, None, 0.0, 1.0, i)
            for i, (func, args) in enumerate(children)]


def context(children: list[Promise]) -> Context:
    by_id = {c.id: c for c in children}
    root = Promise("wf", State.PENDING, "wf", [], None, {}, None, 0.0)
    return Context(root, children, Registry(), by_id.get)


@pytest.mark.parametrize("args", [[math.nan], [{"x": [math.nan, math.inf]}], [(1, "a")], [2**70], [b"\xff"]])
def test_replaying_the_same_arguments_matches_what_is_stored(args: list[Any]) -> None:
    ctx = context(recorded(("leaf", args)))
    handle = ctx.rpc("leaf", *args)
    assert handle.id == "wf.0" and ctx.take_new() == [] and ctx.diverged is None


@pytest.mark.parametrize(("stored", "replayed"), [(True, 1), (1, True), (1, 1.0), (0.0, -0.0), (False, 0),
                                                   ("1", 1), (b"a", "a")])
def test_values_python_calls_equal_are_other_arguments_when_stored_apart(stored: Any, replayed: Any) -> None:
    ctx = context(recorded(("leaf", [stored])))
    with pytest.raises(NonDeterminism, match="at child 0: replay called leaf with other arguments"):
        ctx.rpc("leaf", replayed)
    assert isinstance(ctx.diverged, NonDeterminism)


def test_another_function_at_a_recorded_position_is_named() -> None:
    ctx = context(recorded(("leaf", [1])))
    with pytest.raises(NonDeterminism, match="replay called other, the store records leaf"):
        ctx.rpc("other", 1)


def test_a_workflow_that_swallows_the_error_is_still_marked_diverged() -> None:
    """The worker parks on ctx.diverged, whatever the workflow did with the exception."""

    async def swallowing(ctx: Context) -> str:
        with contextlib.suppress(Exception):
            ctx.rpc("other")
        return "went on"

    ctx = context(recorded(("leaf", [])))
    step = WorkflowRun(ctx, swallowing(ctx)).step()
    assert isinstance(step, Finished) and isinstance(ctx.diverged, NonDeterminism)


def test_finishing_before_every_recorded_child_is_visited_diverges() -> None:
    async def short(ctx: Context) -> int:
        return await ctx.rpc("leaf", 1)

    ctx = context(recorded(("leaf", [1]), ("leaf", [2])))
    step = WorkflowRun(ctx, short(ctx)).step()
    assert isinstance(step, Failed) and step.error is ctx.diverged
    assert "at child 1: replay called nothing" in str(step.error)
