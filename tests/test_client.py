"""The Python client against a real supervisor: threads, asyncio, errors, cancelling,
settling from outside, and a supervisor killed and restarted under a waiting handle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runner
from examples.approval import approval_flow
from runner.errors import Parked
from runner.store import NotFound, State
from tests.apps.e2e import drifting, echo, nap, raise_key
from tests.e2e_support import APPS
from tests.helpers import REPO_ROOT, wait_until

APP_LIST = [*APPS.split(","), "examples.approval"]


def local(store: Path, **options: int) -> runner.LocalSupervisor:
    return runner.LocalSupervisor(store, APP_LIST, cwd=REPO_ROOT, **options)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runner.Client]:
    """One supervisor and one client for the tests that do not kill anything."""
    store = tmp_path_factory.mktemp("client") / "store"
    supervisor = local(store, workers=2).start()
    try:
        with runner.Client(store, APP_LIST, cwd=REPO_ROOT) as client:
            yield client
    finally:
        supervisor.close()  # killed, not drained: the cancelled run's nap would hold a drain up


def test_twenty_threads_start_and_await_runs_at_once(served: runner.Client) -> None:
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = served.start(echo, {"n": i}).result(timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    assert results == {i: {"n": i} for i in range(20)}


def test_asyncio_awaits_runs_without_blocking_its_loop(served: runner.Client) -> None:
    async def main() -> tuple[list[object], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        handles = [served.start(echo, i) for i in range(5)] + [served.start(nap, 0.5)]
        values = await asyncio.gather(*handles)
        stop.set()
        await task
        return values, ticks

    values, ticks = asyncio.run(main())
    assert values == [0, 1, 2, 3, 4, "rested"]
    assert ticks >= 20, f"the loop ran only {ticks} ticks of 10 ms during a 0.5 s wait"


def test_async_method_and_run_async(served: runner.Client) -> None:
    async def main() -> tuple[object, object]:
        handle = served.start(echo, "a")
        return await handle.result_async(timeout=30), await served.run_async(echo, "b")

    assert asyncio.run(main()) == ("a", "b")


def test_a_failed_run_raises_its_error_as_a_workflow_would_see_it(served: runner.Client) -> None:
    with pytest.raises(KeyError):
        served.run(raise_key)


def test_attach_by_id_gets_the_same_run(served: runner.Client) -> None:
    first = served.start(echo, 7, id="attach-me")
    assert first.result(timeout=30) == 7
    again = served.start(echo, 7, id="attach-me")
    assert again.result() == 7 and served.get("attach-me").state is State.RESOLVED
    assert len(served.history("attach-me")) == 1  # ran once
    with pytest.raises(NotFound):
        served.get("no-such-run")


def test_result_timeout_leaves_the_run_going(served: runner.Client) -> None:
    handle = served.start(nap, 0.5)
    with pytest.raises(TimeoutError, match="still pending"):
        handle.result(timeout=0.05)
    assert handle.result(timeout=30) == "rested"


def test_cancelling_a_run_makes_its_result_raise_canceled(served: runner.Client) -> None:
    handle = served.start(nap, 30)
    wait_until(lambda: served.history(handle.id).count(nap) == 1, timeout=20)
    handle.cancel()
    with pytest.raises(runner.Canceled):
        handle.result(timeout=10)
    assert handle.state is State.REJECTED_CANCELED


def test_settling_an_external_promise_resumes_the_workflow(served: runner.Client) -> None:
    approved = served.start(approval_flow, {"amount": 5})
    wait_until(lambda: served.store.get(f"{approved.id}.0") is not None, timeout=20)
    served.resolve(f"{approved.id}.0", "yes")
    assert approved.result(timeout=30)["approved"] is True

    refused = served.start(approval_flow, {"amount": 500})
    wait_until(lambda: served.store.get(f"{refused.id}.0") is not None, timeout=20)
    served.reject(f"{refused.id}.0", PermissionError("too much"))
    with pytest.raises(PermissionError, match="too much"):
        refused.result(timeout=30)


def test_without_a_supervisor_result_says_so_at_once(tmp_path: Path) -> None:
    with runner.Client(tmp_path / "store", APP_LIST, cwd=REPO_ROOT) as client:
        handle = client.start(echo, 1)
        started = time.monotonic()
        with pytest.raises(runner.NoSupervisor, match="no supervisor is running"):
            handle.result(timeout=30)
        assert time.monotonic() - started < 5
        assert handle.state is State.PENDING  # kept for a supervisor to run later


def test_a_handle_waits_through_a_supervisor_killed_and_restarted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with local(store) as supervisor, runner.Client(store, APP_LIST, cwd=REPO_ROOT) as client:
        handle = client.start(nap, 1.0)
        got: list[object] = []
        # The wait must have begun (it refuses to begin without a supervisor) before the kill:
        # on a busy machine the thread may start late.
        began = threading.Event()
        check = client._check_waitable

        def checked(promise_id: str) -> None:
            check(promise_id)
            began.set()

        client._check_waitable = checked  # type: ignore[method-assign]
        waiter = threading.Thread(target=lambda: got.append(handle.result(timeout=60)))
        waiter.start()
        assert began.wait(30)
        supervisor.kill_when_running(nap, whole=True)
        before = supervisor.processes
        assert not supervisor.running and all(runner.local.gone(p) for p in before)
        supervisor.restart()
        waiter.join(60)
        assert got == ["rested"]
        assert client.history(handle.id).outcomes(nap) == ["died", "resolved"]


def test_local_supervisor_leaves_nothing_when_its_body_raises(tmp_path: Path) -> None:
    supervisor = local(tmp_path / "store", workers=3)
    with pytest.raises(RuntimeError, match="boom"), supervisor:
        seen = supervisor.processes
        assert len(seen) == 4  # itself and three workers, each with its start time
        raise RuntimeError("boom")
    assert all(runner.local.gone(p) for p in seen)
    assert not supervisor.running


def test_waiting_for_a_run_with_a_parked_workflow_says_so(tmp_path: Path) -> None:
    store, flag, trace = tmp_path / "store", tmp_path / "flag", tmp_path / "trace.jsonl"
    with local(store) as supervisor, runner.Client(store, APP_LIST, cwd=REPO_ROOT) as client:
        handle = client.start(drifting, str(flag), str(trace))
        wait_until(lambda: client.store.get(f"{handle.id}.1") is not None, timeout=20)
        flag.touch()  # its replay now takes another path...
        supervisor.kill_workers()  # ...and replays: the worker that had it in memory is gone
        client.resolve(f"{handle.id}.1", "ok")
        wait_until(lambda: client.store.parked(), timeout=20)
        with pytest.raises(Parked, match="is parked"):
            handle.result(timeout=10)
