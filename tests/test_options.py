"""Per-call options replayed against recorded children, and refused where they would collide."""

from __future__ import annotations

from typing import Any

import pytest

from runner import Retry
from runner.context import Context
from runner.errors import BadInput, NonDeterminism
from runner.retry import RETRY_TAG
from runner.store import State
from runner.workflow import Failed, Finished
from tests.test_combinators import child, run


async def named(ctx: Context) -> Any:
    return await ctx.rpc("leaf", 1).options(id="job-1")


def test_a_replay_finds_a_child_by_the_id_it_was_given() -> None:
    ctx, step = run([child("job-1", "leaf", [1], State.RESOLVED, "v", 2.0)], named)
    assert step == Finished("v") and ctx.take_new() == []


def test_a_replay_that_calls_something_else_under_that_id_diverges() -> None:
    ctx, step = run([child("job-1", "leaf", [2])], named)
    assert isinstance(step, Failed) and isinstance(ctx.diverged, NonDeterminism)


def test_one_id_for_two_children_is_refused() -> None:
    async def twice(ctx: Context) -> Any:
        ctx.rpc("leaf", 1).options(id="dup")
        ctx.rpc("leaf", 2).options(id="dup")

    _, step = run([], twice)
    assert isinstance(step, Failed) and isinstance(step.error, BadInput)
    assert "given to two children" in str(step.error)


@pytest.mark.parametrize("bad", ["x.3", ""])
def test_an_id_of_a_childs_form_is_refused(bad: str) -> None:
    async def flow(ctx: Context) -> Any:
        ctx.rpc("leaf").options(id=bad)

    _, step = run([], flow)
    assert isinstance(step, Failed)


def test_the_policy_is_stored_with_the_child_and_read_back() -> None:
    async def flow(ctx: Context) -> Any:
        ctx.rpc("leaf").options(retry=Retry(attempts=4, delay=0.5, non_retryable=(KeyError,)))

    ctx, _ = run([], flow)
    [new] = ctx.take_new()
    back = Retry.from_stored(new.tags[RETRY_TAG])
    assert back == Retry(attempts=4, delay=0.5, non_retryable=(KeyError,))
