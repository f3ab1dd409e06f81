"""A worker process: claims ready tasks, runs them, completes them with their fence.

One asyncio loop per process. Leaves run in a thread pool (sync) or on the loop
(async), up to `concurrency` at once; workflows are stepped on the loop and
hold no slot while they wait. The worker sleeps on the store's watch
descriptor, so new work wakes it at once; a short timeout is only a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runner.store import (
    Claim,
    Completion,
    PromiseStore,
    StaleClaim,
    State,
    StoreError,
    StoreIOError,
    normalize,
)

from .context import Context, Current, set_current
from .error_values import error_value
from .errors import NonDeterminism, RunnerError
from .owners import owner_id
from .parked import resume_hint
from .registry import Registered, Registry
from .workflow import Failed, Finished, RunCache, Waiting, WorkflowRun

log = logging.getLogger(__name__)

BACKSTOP = 1.0  # seconds between looks at the store when no event woke us
_PR_SET_PDEATHSIG = 1


def fault_rerun_settled(func: str) -> bool:
    """A test-only fault, never set in production: `RUNNER_TEST_BREAK=rerun-settled[:FUNC]`.

    The worker then runs a sync leaf (every one, or only FUNC) once more after it
    settled, breaking invariant 1 on purpose so a test can prove `runner chaos` sees it.
    """
    name, _, only = os.environ.get("RUNNER_TEST_BREAK", "").partition(":")
    return name == "rerun-settled" and only in ("", func)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when our supervisor dies, so no orphan writes on."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


class Worker:
    def __init__(self, store: PromiseStore, store_dir: Path, registry: Registry, *,
                 owner: str, concurrency: int, lease: float) -> None:
        self.store = store
        self.store_dir = store_dir
        self.registry = registry
        self.owner = owner
        self.concurrency = concurrency
        self.lease = lease
        self.running: dict[str, asyncio.Task[None]] = {}
        self.cache = RunCache()
        self.draining = False
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="leaf")
        self._wake: asyncio.Event | None = None
        self._batch: list[tuple[Completion, asyncio.Future[None]]] = []

    # -- the loop ------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        watch = self.store.watch()
        loop.add_reader(watch.fileno(), self._changed, watch)
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        beats = asyncio.create_task(self._heartbeats())
        try:
            while not self.draining:
                free = self.concurrency - len(self.running)
                self._wake.clear()
                claims = self.store.claim(self.owner, limit=free) if free > 0 else []
                for claim in claims:
                    self._start(claim)
                if not claims:
                    await self._sleep()
            if self.running:
                await asyncio.wait(list(self.running.values()))
        finally:
            beats.cancel()
            loop.remove_reader(watch.fileno())
            watch.close()
            self._executor.shutdown(wait=False)

    def drain(self) -> None:
        """Stop claiming; what runs now finishes and is written."""
        self.draining = True
        if self._wake is not None:
            self._wake.set()

    def _changed(self, watch: Any) -> None:
        watch.drain()
        assert self._wake is not None
        self._wake.set()

    async def _sleep(self) -> None:
        assert self._wake is not None
        timeout = BACKSTOP
        due = self.store.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                self.store.heartbeat(self.owner)
            except StoreIOError:
                # Without heartbeats our leases would lapse while we keep working:
                # better to die now and have the supervisor release and restart at once.
                log.exception("heartbeat failed; worker exits to reopen the store")
                os._exit(3)

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._execute(claim))
        self.running[claim.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self.running.pop(claim.id, None)
            assert self._wake is not None
            self._wake.set()

        task.add_done_callback(done)

    # -- one task ------------------------------------------------------------

    async def _execute(self, claim: Claim) -> None:
        try:
            try:
                entry = self.registry.lookup(claim.promise.func)
            except RunnerError as exc:
                self._finish(claim, State.REJECTED, error_value(exc))
                return
            if entry.is_workflow:
                self._run_workflow(claim, entry)
            else:
                await self._run_leaf(claim, entry)
        except StaleClaim as exc:
            # Someone else holds it now (we were seen as dead, or it was settled
            # from outside): our result is not wanted, and the store refused it.
            log.info("%s: dropped stale work: %s", claim.id, exc)
        except StoreIOError:
            log.exception("%s: store write failed; worker exits to reopen the store", claim.id)
            os._exit(3)

    def _finish(self, claim: Claim, state: State, value: Any, creates: list[Any] | None = None) -> None:
        state, value = _storable(state, value)
        self.store.complete(claim.id, claim.counter, state, value, creates=creates or ())
        log.debug("%s: %s", claim.id, state.value)

    async def _finish_leaf(self, claim: Claim, state: State, value: Any) -> None:
        """Complete a leaf with the others finishing in this turn of the loop: one frame, one fsync.

        The leaf's task lives until its result is durable, so a drain waits for it.
        """
        state, value = _storable(state, value)
        done = asyncio.get_running_loop().create_future()
        self._batch.append((Completion(claim.id, claim.counter, state, value), done))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        await done
        log.debug("%s: %s", claim.id, state.value)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        outcomes: list[Any]
        try:
            outcomes = self.store.complete_many([item for item, _ in batch])
        except StoreError as exc:
            outcomes = [exc] * len(batch)
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                done.set_exception(outcome)
            else:
                done.set_result(None)

    async def _run_leaf(self, claim: Claim, entry: Registered) -> None:
        info = Current(claim.id, claim.attempt, claim.promise.func, self.store_dir)
        args = claim.promise.args
        try:
            if entry.is_async:
                async def call_async() -> Any:
                    set_current(info)
                    return await entry.fn(*args)

                value = await asyncio.create_task(call_async())
            else:
                def call() -> Any:
                    set_current(info)
                    return entry.fn(*args)

                value = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except Exception as exc:
            delay = entry.retry.next_delay(claim.attempt, exc)
            if delay is None:
                await self._finish_leaf(claim, State.REJECTED, error_value(exc))
            else:
                log.info("%s: attempt %d failed (%s), retry in %.3fs", claim.id, claim.attempt, exc, delay)
                self.store.retry(claim.id, claim.counter, delay=delay, error=error_value(exc))
            return
        await self._finish_leaf(claim, State.RESOLVED, value)
        if fault_rerun_settled(entry.name) and not entry.is_async:  # a test-only fault
            await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _run_workflow(self, claim: Claim, entry: Registered) -> None:
        """Step the workflow until it finishes or waits on a child that has not settled."""
        run = self.cache.take(claim.id, claim.counter)
        # The claim just caught up with the log, and a child's settling and its parent's
        # wake-up are one frame: what we have read already shows the child settled.
        settled = None if run is None else self.store.get(run.waiting_on, fresh=False)
        if run is not None and (settled is None or not settled.settled):
            run.close()  # woken for another reason than its child: start over
            run, settled = None, None
        if run is None:
            run = self._replay(claim, entry)
        if run is None:
            return
        while True:
            step = run.step(settled)
            if run.ctx.diverged is not None:  # even if the workflow caught the NonDeterminism
                if isinstance(step, Waiting):
                    run.close()
                self._park(claim, run.ctx.diverged)
                return
            if isinstance(step, Finished):
                self._finish(claim, State.RESOLVED, step.value, run.ctx.take_new())
                return
            if isinstance(step, Failed):
                if not isinstance(step.error, RunnerError):
                    log.info("%s: workflow failed: %r", claim.id, step.error)
                self._finish(claim, State.REJECTED, error_value(step.error))
                return
            if self.store.suspend(claim.id, claim.counter, [step.child], creates=run.ctx.take_new(),
                                  affinity=self.owner):
                run.counter, run.waiting_on = claim.counter, step.child
                self.cache.put(claim.id, run)
                return
            settled = self.store.get(step.child, fresh=False)  # suspend() read it settled

    def _park(self, claim: Claim, error: NonDeterminism) -> None:
        """Hold the workflow with its error instead of rejecting it: fixed code resumes it.

        The children this replay spawned down the other path are not written.
        """
        self.store.park(claim.id, claim.counter, error_value(error))
        log.info("%s: parked: %s; once the code is fixed, '%s' resumes it", claim.id, error,
                    resume_hint(claim.id))

    def _replay(self, claim: Claim, entry: Registered) -> WorkflowRun | None:
        ctx = Context(claim.promise, self.store.children(claim.id), self.registry,
                      lambda pid: self.store.get(pid, fresh=False))
        try:
            coro = entry.fn(ctx, *claim.promise.args)
        except Exception as exc:  # wrong arguments for the function, say
            self._finish(claim, State.REJECTED, error_value(exc))
            return None
        return WorkflowRun(ctx, coro)


def _storable(state: State, value: Any) -> tuple[State, Any]:
    """A result the store cannot hold rejects the promise instead of failing the write
    (of a whole batch of completions, in a group commit)."""
    try:
        normalize(value)
    except StoreError as exc:
        return State.REJECTED, {"type": "NotSerializable", "message": str(exc)}
    return state, value


def run_worker(store: PromiseStore, store_dir: Path, registry: Registry, *, concurrency: int,
               lease: float) -> None:
    """The body of a forked worker process."""
    owner = owner_id(os.getpid())
    worker = Worker(store, store_dir, registry, owner=owner, concurrency=concurrency, lease=lease)
    log.debug("worker %s serving", owner)
    asyncio.run(worker.serve())
