"""What users' code does to a worker: whatever escapes it is a failed attempt, never a wedge.

Leaves and workflows raising what is not an Exception, a workflow awaiting in its
`finally` when its cached coroutine is closed, ids past the store's limit, a tag that
cannot be stored, and a leaf that blocks its event loop for longer than the lease.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import pytest

import tests.apps.robust  # noqa: F401  (registers the functions the unit tests spawn)
from runner.context import Context
from runner.errors import BadInput, ChildIdTooLong
from runner.invoke import MAX_ROOT_ID_BYTES, check_root_id
from runner.registry import registry
from runner.store import MAX_ID_BYTES, DirStore, NewPromise, NotSerializable, State, Wake
from runner.store.lockholder import is_stopped, lock_holders
from runner.store.state import HEARTBEAT
from runner.worker import Worker
from runner.workflow import Waiting, WorkflowRun
from tests.e2e_support import Workspace, result_of
from tests.helpers import wait_until

KINDS = ("StopIteration", "SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError")


def seen_as(kind: str, in_coroutine: bool) -> str:
    """A StopIteration raised in a coroutine arrives as RuntimeError (PEP 479)."""
    return "RuntimeError" if in_coroutine and kind == "StopIteration" else kind


def traces(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rejected_with(done: Any) -> dict[str, Any]:
    """The error a `--json` invoke printed for a rejected run."""
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return cast(dict[str, Any], json.loads(done.stdout))


# -- leaves and workflows raising BaseException -----------------------------------------------


@pytest.mark.parametrize("func", ["escapes", "escapes_async"])
def test_a_leaf_raising_a_base_exception_is_retried_then_rejected(ws: Workspace, func: str) -> None:
    ws.start(workers=1)
    for kind in KINDS:
        trace = ws.root / f"{kind}.jsonl"
        error = rejected_with(ws.invoke(func, str(trace), kind, promise_id=kind, timeout=30))

        assert error["type"] == seen_as(kind, func == "escapes_async")
        assert [line["attempt"] for line in traces(trace)] == [1, 2]  # Retry(attempts=2)
        assert ws.get(kind).state is State.REJECTED
    assert ws.store.claims() == []
    assert len(ws.supervisor()["workers"]) == 1  # the one worker served them all: it never died


def test_an_async_leaf_cancelling_its_own_task_is_a_failed_attempt(ws: Workspace) -> None:
    trace = ws.root / "cancels.jsonl"
    assert rejected_with(ws.invoke("cancels_itself", str(trace), timeout=30))["type"] == "CancelledError"
    assert [line["attempt"] for line in traces(trace)] == [1, 2, 3]  # the default Retry()


def test_a_failure_of_the_worker_itself_still_ends_the_attempt(tmp_path: Path) -> None:
    """The last resort: what escapes the worker's own handling (here a group commit that
    fails) is a failed attempt by the function's policy, and no claim stays held."""
    store = DirStore(tmp_path / "store")
    try:
        store.create([NewPromise("leaf", "cleanup", [str(tmp_path / "t.jsonl")])])  # resolves
        claim = store.claim("w1")[0]
        worker = Worker(store, tmp_path, registry, owner="w1", concurrency=1, lease=30.0)
        broken = RuntimeError("the batch write broke")

        def complete_and_claim(*_: Any, **__: Any) -> Any:
            raise broken

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store, "complete_and_claim", complete_and_claim)
            asyncio.run(worker._execute(claim))

        task = store.task("leaf")
        assert task is not None and task.state.value == "ready" and task.attempt == 2  # Retry()
        assert task.last_error["type"] == "RuntimeError"
        assert store.claims() == []
    finally:
        store.close()


def test_a_workflow_raising_a_base_exception_is_rejected(ws: Workspace) -> None:
    ws.start(workers=1)
    for kind in KINDS:
        error = rejected_with(ws.invoke("workflow_escapes", kind, promise_id=kind, timeout=30))
        assert error["type"] == seen_as(kind, True)
    assert ws.store.claims() == []


# -- a cached coroutine that awaits in its finally --------------------------------------------


def _with_cleanup_run(tmp_path: Path) -> tuple[DirStore, WorkflowRun]:
    store = DirStore(tmp_path / "store")
    root = store.create([NewPromise("wf", "with_cleanup", ["unused"])])[0]
    ctx = Context(root, [], registry, lambda pid: store.get(pid))
    return store, WorkflowRun(ctx, registry.lookup("with_cleanup").fn(ctx, "unused"))


def test_closing_a_coroutine_that_awaits_in_its_finally_does_not_raise(tmp_path: Path) -> None:
    store, run = _with_cleanup_run(tmp_path)
    try:
        assert run.step() == Waiting(("wf.0",), Wake.FIRST)

        run.close()  # its finally spawns cleanup, awaits it and so yields instead of exiting

        assert inspect.getcoroutinestate(run.coro) == inspect.CORO_CLOSED
        assert run.ctx.take_new()[-1].func == "cleanup"  # spawned in memory, never written
        assert store.get("wf.1") is None
    finally:
        store.close()


def test_a_closed_cached_workflow_with_a_finally_await_finishes(ws: Workspace) -> None:
    """Its worker finds the cached coroutine stale (someone else claimed the workflow since),
    closes it and replays from the store; the cleanup runs once, at the real end."""
    ws.start(workers=1)
    trace = ws.root / "cleanup.jsonl"
    ws.invoke("with_cleanup", str(trace), promise_id="wc", extra=("--no-wait",))
    wait_until(lambda: ws.store.get("wc.0") is not None and _waiting(ws, "wc"), timeout=20)
    worker = ws.supervisor()["workers"][0]
    stop_outside_the_lock(ws, worker)  # so that another owner takes the wake-up first
    try:
        ws.store.settle("wc.0", State.RESOLVED, "first")
        thief = ws.store.claim("thief", now=time.time() + 2)  # past the worker's grace
        assert [c.id for c in thief] == ["wc"]
        ws.store.release("wc", thief[0].counter)
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: ws.store.get("wc.1") is not None and _waiting(ws, "wc"), timeout=20,
               message=lambda: f"wc did not replay: {ws.store.task('wc')}")
    ws.store.settle("wc.1", State.RESOLVED, "second")

    done = ws.invoke("with_cleanup", str(trace), promise_id="wc", timeout=30)  # attaches to the run
    assert result_of(done) == ["first", "second"]
    assert len(traces(trace)) == 1
    assert ws.store.claims() == []


def stop_outside_the_lock(ws: Workspace, pid: int) -> None:
    """SIGSTOP `pid` at an instant it does not hold the store lock (else the supervisor
    would kill it as a stopped holder, and the store would wait for it until then)."""
    fd = os.open(ws.store_dir / "lock", os.O_RDONLY)
    try:
        while True:
            os.kill(pid, signal.SIGSTOP)
            wait_until(lambda: is_stopped(pid), timeout=5)
            if pid not in lock_holders(fd):
                return
            os.kill(pid, signal.SIGCONT)
    finally:
        os.close(fd)


def _waiting(ws: Workspace, promise_id: str) -> bool:
    task = ws.store.task(promise_id)
    return task is not None and task.state.value == "waiting"


# -- ids past the limit, tags the store cannot hold ----------------------------------------------


def test_a_root_id_is_refused_when_its_children_ids_would_not_fit() -> None:
    assert check_root_id("r" * MAX_ROOT_ID_BYTES)
    with pytest.raises(BadInput, match=f"at most {MAX_ROOT_ID_BYTES} bytes"):
        check_root_id("r" * (MAX_ROOT_ID_BYTES + 1))
    with pytest.raises(BadInput):
        check_root_id("\u00e9" * (MAX_ROOT_ID_BYTES // 2 + 1))  # bytes, not characters


def test_invoke_refuses_a_root_id_at_the_limit(ws: Workspace) -> None:
    done = ws.invoke("factorial", 3, promise_id="r" * MAX_ID_BYTES)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "kept for its children's ids" in done.stderr
    assert not ws.store_dir.exists() or ws.store.search().items == []


def test_ctx_run_refuses_a_child_id_past_the_limit_and_spawns_nothing(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    try:
        parent = store.create([NewPromise("p" * (MAX_ID_BYTES - 1), "descend", [0])])[0]
        ctx = Context(parent, [], registry, lambda pid: None)
        with pytest.raises(ChildIdTooLong, match=f"past the limit of {MAX_ID_BYTES}") as refused:
            ctx.run(registry.lookup("descend").fn, 1)
        assert refused.value.size == MAX_ID_BYTES + 1
        with pytest.raises(NotSerializable):
            Context(store.create([NewPromise("q", "f")])[0], [], registry, lambda pid: None).promise(when={1})
        assert ctx.take_new() == []
    finally:
        store.close()


def test_a_recursion_past_the_id_limit_is_rejected_not_hung(ws: Workspace) -> None:
    """The default root id leaves room for about 500 levels: 1,600 pass the limit."""
    ws.start(workers=2)
    error = rejected_with(ws.invoke("factorial", 1600, promise_id="fact", timeout=120))

    assert error["type"] == "ChildIdTooLong"
    assert ws.store.claims() == []


def test_the_refusal_can_be_caught_where_ctx_run_raises_it(ws: Workspace) -> None:
    root = "r" * 900  # each level adds ".0": the child of depth 62 would be 1,026 bytes
    assert result_of(ws.invoke("descend", 0, promise_id=root, timeout=60)) == 62


def test_an_unstorable_promise_tag_rejects_the_workflow(ws: Workspace) -> None:
    error = rejected_with(ws.invoke("unstorable_tag", promise_id="tagged", timeout=30))

    assert error["type"] == "NotSerializable"
    assert ws.store.children("tagged") == []


# -- heartbeats ----------------------------------------------------------------------------------


def test_an_async_leaf_blocking_its_loop_past_the_lease_runs_once(ws: Workspace) -> None:
    """Lease 3 s, blocked 8 s: heartbeats on the loop would let the lease lapse and the
    other worker run it again; on their own thread they keep it."""
    ws.start(workers=2, extra=("--lease", "3s"))
    trace = ws.root / "blocks.jsonl"

    assert result_of(ws.invoke("blocks_loop", str(trace), 8, promise_id="blocked", timeout=60)) == "unblocked"
    assert len(traces(trace)) == 1
    assert ws.get("blocked").attempt == 1
    logged = ws.stderr("supervisor")
    assert "event loop blocked" in logged and "running now: blocked" in logged  # said loudly


def test_heartbeats_renew_only_the_claims_of_running_tasks(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store", lease=10.0)
    try:
        store.create([NewPromise("running", "steady"), NewPromise("ended", "steady")], now=0.0)
        assert len(store.claim("w1", now=1.0, limit=2)) == 2
        worker = Worker(store, tmp_path, registry, owner="w1", concurrency=2, lease=10.0)
        worker.running["running"] = cast(Any, None)  # a task in flight; "ended" has none

        assert worker.beat(now=8.0) == 1

        assert store.expire(now=12.0) == ["ended"]
        task = store.task("running")
        assert task is not None and task.expires_at == 18.0
    finally:
        store.close()


def test_a_heartbeat_op_of_an_earlier_version_still_renews_every_claim(tmp_path: Path) -> None:
    """Logs written before heartbeats named their ids read as they did; the new op renews
    only the ids it names."""
    store = DirStore(tmp_path / "store", lease=10.0)
    try:
        store.create([NewPromise("a", "steady"), NewPromise("b", "steady")], now=0.0)
        store.claim("w1", now=1.0, limit=2)
        with store._locked():  # written as an earlier version wrote it
            store._commit([[HEARTBEAT, "w1", 30.0], [HEARTBEAT, "w1", 40.0, ["b"]]])
    finally:
        store.close()
    reopened = DirStore(tmp_path / "store")
    try:
        expiries = {t.id: t.expires_at for t in reopened.claims()}
        assert expiries == {"a": 30.0, "b": 40.0}
    finally:
        reopened.close()
