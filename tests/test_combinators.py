"""Combinators replayed against recorded children: the recorded decision wins over a new look."""

from __future__ import annotations

from typing import Any

from runner.combinators import DECISION, Kind, pick
from runner.context import Context
from runner.errors import NonDeterminism
from runner.registry import Registry
from runner.store import Promise, State
from runner.workflow import Failed, Finished, Waiting, WorkflowRun


def child(pid: str, func: str, args: list[Any], state: State = State.PENDING, value: Any = None,
          settled_at: float | None = None) -> Promise:
    return Promise(pid, state, func, args, "wf", {}, None, 1.0, settled_at, value)


def run(children: list[Promise], body: Any) -> tuple[Context, Any]:
    by_id = {p.id: p for p in children}
    ctx = Context(Promise("wf", State.PENDING, "wf", [], None, {}, None, 1.0), children, Registry(),
                  by_id.get)
    return ctx, WorkflowRun(ctx, body(ctx)).step()


async def race_two(ctx: Context) -> Any:
    return await ctx.race([ctx.rpc("leaf", 0), ctx.rpc("leaf", 1)])


def test_a_replayed_race_takes_the_recorded_winner_not_the_earliest_now() -> None:
    children = [child("wf.0", "leaf", [0], State.RESOLVED, "zero", 5.0),
                child("wf.1", "leaf", [1], State.RESOLVED, "one", 3.0),  # settled first
                child("wf.2", DECISION, ["race", ["wf.0", "wf.1"]], State.RESOLVED, 0, 6.0)]
    _, step = run(children, race_two)
    assert step == Finished("zero")


def test_a_race_decided_now_is_recorded_with_the_next_batch() -> None:
    children = [child("wf.0", "leaf", [0]), child("wf.1", "leaf", [1], State.RESOLVED, "one", 3.0)]
    ctx, step = run(children, race_two)
    assert step == Finished("one")
    [decision] = ctx.take_new()
    assert (decision.id, decision.func, decision.resolved, decision.value) == ("wf.2", DECISION, True, 1)


def test_an_undecided_race_suspends_once_on_every_child() -> None:
    _, step = run([child("wf.0", "leaf", [0]), child("wf.1", "leaf", [1])], race_two)
    assert isinstance(step, Waiting) and step.children == ("wf.0", "wf.1")


def test_a_race_over_other_children_than_recorded_diverges() -> None:
    children = [child("wf.0", "leaf", [0]), child("wf.1", "leaf", [1]),
                child("wf.2", DECISION, ["any", ["wf.0", "wf.1"]], State.RESOLVED, 0, 6.0)]
    ctx, step = run(children, race_two)
    assert isinstance(step, Failed) and isinstance(ctx.diverged, NonDeterminism)


def test_pick_takes_the_earliest_deciding_child() -> None:
    ok = child("a", "f", [], State.RESOLVED, 1, 4.0)
    bad = child("b", "f", [], State.REJECTED, {"type": "E", "message": ""}, 2.0)
    pending = child("c", "f", [])
    assert pick(Kind.RACE, [ok, bad, pending]) == 1
    assert pick(Kind.ANY, [ok, bad, pending]) == 0
    assert pick(Kind.ALL, [ok, bad, pending]) == 1
    assert pick(Kind.ALL, [ok, ok]) == -1
    assert pick(Kind.ANY, [bad, None]) == -1
