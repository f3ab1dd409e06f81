"""A worker process: claims ready tasks, runs them, completes them with their fence.

One asyncio loop per process. Leaves run in a thread pool (sync) or on the loop
(async), up to `concurrency` at once; workflows are stepped on the loop and
hold no slot while they wait. The worker sleeps on the store's watch
descriptor, so new work wakes it at once; a short timeout is only a backstop.
Heartbeats run on a thread of their own, so a leaf that blocks the loop keeps its lease.

Whatever escapes a user's function, BaseException included, is a failed attempt of
that function: retried or rejected by its policy. Only the worker's own shutdown
(the cancellation of its tasks) is not; the supervisor gives those claims back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from runner.store import (
    TIMER,
    TIMERS,
    WORK,
    Claim,
    Completion,
    NewPromise,
    PromiseStore,
    StaleClaim,
    State,
    StoreError,
    StoreFull,
    StoreIOError,
    normalize,
)

from .context import Context, Current, set_current
from .error_values import error_value
from .errors import NonDeterminism, RunnerError
from .owners import owner_id
from .parked import resume_hint
from .registry import Registered, Registry
from .retry import Retry, policy_of
from .workflow import Failed, Finished, RunCache, Waiting, WorkflowRun

log = logging.getLogger(__name__)

BACKSTOP = 1.0  # seconds between looks at the store when no event woke us
EXIT_STORE_FAILED = 3  # a worker's exit codes the supervisor reads: the store could not be written,
EXIT_STORE_FULL = 4  # because the disk is full
_PR_SET_PDEATHSIG = 1


def rerun_settled_fault() -> str | None:
    """A test-only fault, never set in production: `RUNNER_TEST_BREAK=rerun-settled[:FUNC]`.

    The worker then runs a sync leaf (every one, or only FUNC) once more after it
    settled, breaking invariant 1 on purpose so a test can prove `runner chaos` sees it.
    Read once when a worker starts, not on every leaf: None when off, "" for every
    leaf, else the one FUNC.
    """
    name, _, only = os.environ.get("RUNNER_TEST_BREAK", "").partition(":")
    return only if name == "rerun-settled" else None


def exit_store_failed(exc: StoreIOError) -> NoReturn:
    """Exit at once with the code that tells the supervisor why: the handle must be reopened.

    The supervisor says it, once per restart and with a growing pause (a full disk must
    not fill the terminal), so the detail here is only for whoever asked for info logs.
    """
    full = isinstance(exc, StoreFull)
    log.log(logging.INFO if full else logging.WARNING, "store write failed, worker exits: %s", exc)
    os._exit(EXIT_STORE_FULL if full else EXIT_STORE_FAILED)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when our supervisor dies, so no orphan writes on."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


class Worker:
    def __init__(self, store: PromiseStore, files: Path, registry: Registry, *,
                 owner: str, concurrency: int, lease: float, poke: Callable[[], None] | None = None) -> None:
        self.store = store
        self.files = files  # this machine's files of the store (StoreLocation.files): the effects journal
        self.registry = registry
        self.owner = owner
        self.concurrency = concurrency
        self.lease = lease
        self.running: dict[str, asyncio.Task[None]] = {}
        self._running_lock = threading.Lock()  # the heartbeat thread reads `running` too
        self.cache = RunCache()
        self.draining = False
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="leaf")
        self._rerun_settled = rerun_settled_fault()
        self._wake: asyncio.Event | None = None
        self._batch: list[tuple[Completion, asyncio.Future[None]]] = []
        self.poke = poke  # wakes the supervisor, which fires the timers

    # -- the loop ------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        watch = self.store.watch(WORK, TIMERS)  # new work, or work due later (a retry's backoff)
        loop.add_reader(watch.fileno(), self._changed, watch)
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        stop = threading.Event()
        beats = threading.Thread(target=self._heartbeats, args=(stop, loop), name="heartbeat", daemon=True)
        beats.start()
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
            stop.set()
            beats.join()
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

    def _heartbeats(self, stop: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
        """Renew our leases every third of a lease, on a thread of its own.

        Not on the loop: an `async def` leaf that blocks it (time.sleep inside) would
        starve the heartbeats, its lease would lapse and another worker would run it again
        while it still runs here. The store handle is safe to share: every call takes its
        mutex before its file lock. Each beat also pings the loop, to say when it is blocked.
        """
        pinged: float | None = None  # when the ping the loop has not answered yet was sent
        answered = threading.Event()
        while not stop.wait(self.lease / 3):
            if pinged is None or answered.is_set():
                pinged = time.monotonic()
                answered.clear()
                loop.call_soon_threadsafe(answered.set)
            else:
                self._blocked(time.monotonic() - pinged)
            try:
                self.beat()
            except StoreIOError as exc:
                # Without heartbeats our leases would lapse while we keep working:
                # better to die now and have the supervisor release and restart at once.
                exit_store_failed(exc)
            except Exception:  # whatever it is, our leases would lapse just the same
                log.exception("heartbeat failed; worker exits")
                os._exit(EXIT_STORE_FAILED)

    def _blocked(self, seconds: float) -> None:
        with self._running_lock:
            ids = sorted(self.running)
        log.warning("event loop blocked for %.0f s: an async leaf that blocks it (time.sleep, say) "
                    "stalls every task of this worker; running now: %s", seconds, ", ".join(ids))

    def beat(self, now: float | None = None) -> int:
        """Renew the leases of the tasks running now, and of no other claim we may hold:
        a claim whose task ended without giving it back lapses, and is released."""
        with self._running_lock:
            ids = list(self.running)
        return self.store.heartbeat(self.owner, now, ids=ids) if ids else 0

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._execute(claim))
        with self._running_lock:
            self.running[claim.id] = task

        def done(_: asyncio.Task[None]) -> None:
            with self._running_lock:
                self.running.pop(claim.id, None)
            assert self._wake is not None
            self._wake.set()

        task.add_done_callback(done)

    # -- one task ------------------------------------------------------------

    async def _execute(self, claim: Claim) -> None:
        """Run one claimed task. However it ends, its claim is not left held by us."""
        policy = _ONE_ATTEMPT
        try:
            try:
                entry = self.registry.lookup(claim.promise.func)
            except RunnerError as exc:
                self._finish(claim, State.REJECTED, error_value(exc))
                return
            policy = policy_of(claim.promise, entry.retry)
            if entry.is_workflow:
                self._run_workflow(claim, entry)
            else:
                await self._run_leaf(claim, entry)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled_by_us():
                raise  # the worker's own shutdown: the supervisor gives our claims back when we exit
            self._escaped(claim, policy, exc)  # a leaf that cancelled its own task, too

    def _escaped(self, claim: Claim, policy: Retry, exc: BaseException) -> None:
        """The last resort for what escaped a task's run: end the attempt anyway."""
        if _store_said_stop(claim, exc):
            return
        # One line: users' code can cause this (an error whose str() raises), and a command
        # prints no traceback for what a user can cause; --log-level debug shows it.
        log.error("%s: %r escaped its run; the attempt fails", claim.id, exc,
                  exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
        try:
            if not self._retried(claim, policy, exc):
                self._finish(claim, State.REJECTED, error_value(exc))
        except BaseException as again:
            if not _store_said_stop(claim, again):
                # No longer renewed by our heartbeats, the claim lapses and is released.
                log.exception("%s: cannot end the attempt; its lease will lapse", claim.id)

    def _retried(self, claim: Claim, policy: Retry, exc: BaseException) -> bool:
        """Give the claim back for a later attempt, if the policy grants one."""
        delay = policy.next_delay(claim.attempt, exc)
        if delay is None:
            return False
        log.info("%s: attempt %d failed (%r), retry in %.3fs", claim.id, claim.attempt, exc, delay)
        # A message the store cannot hold (lone surrogates, say) must not lose the retry.
        error = _storable(State.REJECTED, error_value(exc))[1]
        self.store.retry(claim.id, claim.counter, delay=delay, error=error)
        return True

    def _finish(self, claim: Claim, state: State, value: Any, creates: list[Any] | None = None) -> None:
        state, value = _storable(state, value)
        self.store.complete(claim.id, claim.counter, state, value, creates=creates or ())
        log.debug("%s: %s", claim.id, state.value)

    async def _finish_leaf(self, claim: Claim, state: State, value: Any) -> None:
        """Complete a leaf with the others finishing in this turn of the loop, and claim the
        slots they free: one frame, one fsync (see _flush).

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
        """Write the batch, claiming as many tasks as it frees slots in the same write.

        The batch's tasks still count as running until their futures are done, so the slots
        free once it is written are those free now plus its own. A frame and its fdatasync
        cost a store call's CPU several times over: a leaf's claim sharing the frame of the
        completions before it halves what a fan-out writes.
        """
        batch, self._batch = self._batch, []
        free = 0 if self.draining else self.concurrency - len(self.running) + len(batch)
        outcomes: list[Any]
        claims: list[Claim] = []
        try:
            outcomes, claims = self.store.complete_and_claim([item for item, _ in batch], self.owner, free)
        except Exception as exc:  # every waiting leaf hears of it: none may wait for ever
            outcomes = [exc] * len(batch)
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                done.set_exception(outcome)
            else:
                done.set_result(None)
        for claim in claims:
            self._start(claim)

    async def _run_leaf(self, claim: Claim, entry: Registered) -> None:
        """Run the leaf; what it raises comes back as a value, never through asyncio.

        Through asyncio it would not arrive: a StopIteration set on a future is refused
        (the future never completes), and a SystemExit or KeyboardInterrupt in a task is
        raised out of the event loop, ending the worker.
        """
        info = Current(claim.id, claim.attempt, claim.promise.func, self.files)
        args = claim.promise.args
        if entry.is_async:
            async def call_async() -> tuple[Any, BaseException | None]:
                set_current(info)
                try:
                    return await entry.fn(*args), None
                except asyncio.CancelledError as exc:
                    if _cancelled_by_us():
                        raise
                    return None, exc  # the leaf's own: it awaited something cancelled
                except BaseException as exc:
                    return None, exc

            value, error = await asyncio.create_task(call_async())
        else:
            def call() -> tuple[Any, BaseException | None]:
                set_current(info)
                try:
                    return entry.fn(*args), None
                except BaseException as exc:
                    return None, exc

            value, error = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        if error is not None:
            if not self._retried(claim, policy_of(claim.promise, entry.retry), error):
                await self._finish_leaf(claim, State.REJECTED, error_value(error))
            return
        await self._finish_leaf(claim, State.RESOLVED, value)
        fault = self._rerun_settled  # a test-only fault
        if fault is not None and fault in ("", entry.name) and not entry.is_async:
            await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _run_workflow(self, claim: Claim, entry: Registered) -> None:
        """Step the workflow until it finishes or waits on children whose condition does not hold.

        A run kept in memory resumes where it stopped: its await checks again what it
        waits on (the claim just caught up with the log), and suspends again if the
        store woke it for another reason.
        """
        run = self.cache.take(claim.id, claim.counter) or self._replay(claim, entry)
        if run is None:
            return
        while True:
            step = run.step()
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
            creates = run.ctx.take_new()
            waits = self.store.suspend(claim.id, claim.counter, step.children, creates=creates,
                                       affinity=self.owner, wake=step.wake)
            self._timers_created(creates)
            if waits:
                run.counter = claim.counter
                self.cache.put(claim.id, run)
                return

    def _timers_created(self, creates: list[NewPromise]) -> None:
        """Tell the supervisor a timer was written, so it looks at when the next one is due."""
        if self.poke is not None and any(new.func == TIMER for new in creates):
            self.poke()

    def _park(self, claim: Claim, error: NonDeterminism) -> None:
        """Hold the workflow with its error instead of rejecting it: fixed code resumes it.

        The children this replay spawned down the other path are not written.
        """
        self.store.park(claim.id, claim.counter, error_value(error))
        log.info("%s: parked: %s; once the code is fixed, '%s' resumes it", claim.id, error,
                    resume_hint(claim.id))

    def _replay(self, claim: Claim, entry: Registered) -> WorkflowRun | None:
        recorded = self.store.children(claim.id)
        # A settled promise never changes: the replay reads those from this one listing, and
        # only the others from the store (on a database, one round trip per child otherwise).
        settled = {p.id: p for p in recorded if p.settled}
        ctx = Context(claim.promise, recorded, self.registry,
                      lambda pid: settled.get(pid) or self.store.get(pid))
        try:
            coro = entry.fn(ctx, *claim.promise.args)
        except Exception as exc:  # wrong arguments for the function, say
            self._finish(claim, State.REJECTED, error_value(exc))
            return None
        return WorkflowRun(ctx, coro)


def _store_said_stop(claim: Claim, exc: BaseException) -> bool:
    """Handle the store's refusals that end a task's work here; False for anything else."""
    if isinstance(exc, StaleClaim):
        # Someone else holds it now (we were seen as dead, or it was settled
        # from outside): our result is not wanted, and the store refused it.
        log.info("%s: dropped stale work: %s", claim.id, exc)
        return True
    if isinstance(exc, StoreIOError):
        exit_store_failed(exc)
    return False


_ONE_ATTEMPT = Retry.none()  # the policy of a task whose function is unknown


def _cancelled_by_us() -> bool:
    """Whether the running task is being cancelled, rather than user code raising CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _storable(state: State, value: Any) -> tuple[State, Any]:
    """A result the store cannot hold rejects the promise instead of failing the write
    (of a whole batch of completions, in a group commit)."""
    try:
        normalize(value)
    except StoreError as exc:
        return State.REJECTED, {"type": "NotSerializable", "message": str(exc)}
    return state, value


def run_worker(store: PromiseStore, files: Path, registry: Registry, *, concurrency: int,
               lease: float, poke: Callable[[], None] | None = None, owner: str | None = None) -> None:
    """The body of a forked worker process; `owner` names it in its claims (by default its pid
    and start time; on a shared store its supervisor's id too)."""
    owner = owner_id(os.getpid()) if owner is None else owner
    worker = Worker(store, files, registry, owner=owner, concurrency=concurrency, lease=lease,
                    poke=poke)
    log.debug("worker %s serving", owner)
    asyncio.run(worker.serve())
