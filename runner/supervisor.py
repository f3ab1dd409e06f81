"""The supervisor: forks workers, sees them die, gives their claims back at once.

Signal handlers only count signals; the loop does the work. The loop sleeps in
select() on the signal wake-up pipe (SIGCHLD included, so a death is seen, not
guessed) and, when it also waits for a result, on the store's watch.

A death is an attempt: the claims of a worker that died, of a previous generation, or
of a lapsed lease go back with the attempt moved on, and the function's retry policy
decides whether and when it runs again (see `after_death`).

On a store several supervisors share, `SharedSupervision` (shared.py) adds the
heartbeats, the one sweeper, and the taking over of supervisors declared dead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from runner.store import (
    DEFAULT_LEASE,
    TIMERS,
    Promise,
    PromiseStore,
    StoreFull,
    StoreIOError,
    Task,
)
from runner.store.deaths import died
from runner.store.interface import Watchable
from runner.store.lockholder import is_stopped

from .errors import SupervisorRunning, UnknownFunction, WorkerDied
from .location import StoreLocation
from .owners import owner_id
from .registry import Registry
from .retention import Retention
from .retry import policy_of
from .shared import DEFAULT_LAPSE, UNREACHABLE, SharedSupervision
from .worker import EXIT_STORE_FAILED, EXIT_STORE_FULL, die_with_parent, exit_store_failed, run_worker

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between expiry sweeps (the backstop for deaths nobody saw)
QUICK_DEATH = 1.0  # a worker dying younger than this is restarted after a pause
RESTART_PAUSE = 0.5
STORE_PAUSE = 0.5  # the first restart after a worker could not write the store; doubles up to
STORE_PAUSE_MAX = 5.0  # this, so a full disk costs a line every few seconds, and space returning is used soon
_FORK_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
LOCK_WATCH = 0.5  # seconds between looks at who holds the store lock
STOPPED_HOLDER = 2.0  # a worker of ours stopped this long while holding the lock is killed


class Supervisor:
    def __init__(self, store: PromiseStore, location: StoreLocation, registry: Registry, *, workers: int = 2,
                 concurrency: int = 8, lease: float = DEFAULT_LEASE,
                 retention: Retention | None = None, lapse: float = DEFAULT_LAPSE) -> None:
        self.store = store
        self.location = location
        self.registry = registry
        self.size = workers
        self.concurrency = concurrency
        self.lease = lease
        self.retention = retention
        self.workers: dict[int, tuple[str, float]] = {}  # pid -> (owner, started)
        self.started = time.time()
        self._signals = 0
        self.stopped_by: int | None = None  # the first SIGINT/SIGTERM received, if any
        self._kill = False
        self._killed = False  # we SIGKILLed the workers ourselves: their deaths are not attempts
        self._draining = False
        self._restart_at: list[float] = []
        self._unreleased: dict[str, tuple[str, bool]] = {}  # dead owner -> (how it died, counted)
        self._store_failures = 0  # workers in a row that could not write the store
        self._full_said_at = -math.inf
        self._embedded = False
        self._pipe: tuple[int, int] | None = None
        # Workers write a byte here when they wrote a timer: the loop then reads the store to
        # learn when the next timer is due, and sleeps until then (no polling loop).
        self._poke: tuple[int, int] | None = None
        # Several supervisors share the store: beats, one sweeper, the dead taken over.
        self.shared = SharedSupervision(store, lapse, self.after_death) if store.shared else None
        self._fenced: set[int] = set()  # workers we killed as our id was retired: no attempt spent

    def run(self, until: Callable[[], bool] | None = None, wake_on: Sequence[str] = ()) -> None:
        """Supervise until a signal (or `until()` turns true), then drain and return.

        `until` is asked again whenever a topic of `wake_on` (what it looks at) is produced.
        """
        if not self.store.lock_supervisor():
            raise SupervisorRunning(f"a supervisor is already running on {self.location}")
        try:
            if self.shared is None:
                # Claims left by a previous generation belong to dead or fenced
                # processes: give them back now rather than after their leases.
                released = self.store.release_owner(None, how="its supervisor was gone",
                                                    decide=self.after_death)
                if released:
                    log.info("took back %d claims of the previous supervisor", len(released))
            else:  # the others' claims are theirs: those of the dead go back when seen or lapsed
                self.shared.join()
                self.shared.start_beating(lambda: self.location.open(lease=self.lease))
            # The code may have been fixed since they were parked: let each replay again.
            resumed = self.store.unpark(None)
            if resumed:
                log.info("resumed %d parked workflows: %s", len(resumed), ", ".join(resumed[:10]))
            self._loop(until, wake_on)
        finally:
            if self.shared is not None:
                self.shared.stop_beating()
            self.store.unlock_supervisor()  # on a shared store, retires our id: nobody waits out our lapse

    def _loop(self, until: Callable[[], bool] | None, wake_on: Sequence[str]) -> None:
        # Embedded in an invoke, a store that cannot be written ends the wait (exit 3);
        # under `runner start`, it is waited out, calmly, until space returns.
        self._embedded = until is not None
        previous = self._install_signals()
        self._poke = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Embedded, or on a shared store (the sweeper fires the timers the others' workers write).
        watch = self.store.watch(TIMERS, *wake_on) if until is not None or self.shared is not None else None
        watchdog = LockWatchdog(self.store, lambda: set(self.workers))
        watchdog.start()
        try:
            for _ in range(self.size):
                self._spawn()
            next_tick = time.monotonic() + TICK
            while self.workers or self._restart_at:
                self._fire_timers()  # first of all: those that came due while no supervisor ran
                self._wait(watch, min(next_tick, *self._restart_at, time.monotonic() + TICK,
                                      self._next_timer(), *self._shared_due()))
                self._shared_tick()
                self._reap()
                self._restart_due()
                if self._signals >= 1 or (until is not None and until()):
                    self._drain()
                if self._signals >= 2 or self._kill:
                    self._kill_all()
                if time.monotonic() >= next_tick:
                    self._sweep()
                    next_tick = time.monotonic() + TICK
        finally:
            watchdog.stop()
            if watch is not None:
                watch.close()
            self._kill_all()
            self._reap(block=True)
            self._restore_signals(previous)
            _close_pipe(self._poke)
            self._poke = None

    # -- signals -------------------------------------------------------------

    def _install_signals(self) -> dict[int, object]:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe = (read_fd, write_fd)
        previous: dict[int, object] = {sig: signal.getsignal(sig) for sig in _FORK_SIGNALS}
        signal.set_wakeup_fd(write_fd)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to write the wake-up byte
        signal.signal(signal.SIGINT, self._count_signal)
        signal.signal(signal.SIGTERM, self._count_signal)
        return previous

    def _count_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self.stopped_by is None:
            self.stopped_by = signum

    def stop_now(self) -> None:
        """Kill the workers instead of draining them: the run they served was abandoned.

        Safe at any instant: their claims are fenced and given back as they are reaped.
        A branch of another run that was in flight on them runs again under the next
        supervisor, as after any crash.
        """
        self._kill = True

    def _restore_signals(self, previous: dict[int, object]) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        _close_pipe(self._pipe)
        self._pipe = None

    def _wait(self, watch: Watchable | None, deadline: float) -> None:
        assert self._pipe is not None and self._poke is not None
        fds: list[Any] = [self._pipe[0], self._poke[0]] + ([watch] if watch is not None else [])
        readable, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
        if self._pipe[0] in readable:
            _drain(self._pipe[0])
        if self._poke[0] in readable:
            _drain(self._poke[0])
        if watch is not None and watch in readable:
            watch.drain()

    # -- timers ------------------------------------------------------------------

    def _next_timer(self) -> float:
        """The monotonic time the earliest timer is due (far off when there is none, or
        when another supervisor sweeps)."""
        due = self._store_call(self.store.next_timer) if self._sweeps() else None
        if due is None:
            return math.inf
        return time.monotonic() + (due - time.time())

    def _fire_timers(self) -> None:
        """Resolve the timers that are due; whoever sleeps on one is woken in the same frame."""
        due = self._store_call(self.store.next_timer) if self._sweeps() else None
        if due is not None and due <= time.time():
            fired = self._store_call(self.store.fire_timers)
            log.debug("fired %d timers", len(fired or ()))

    def _poke_fn(self) -> Callable[[], None] | None:
        """What a worker calls after writing a timer: a byte down the poke pipe."""
        if self._poke is None:
            return None
        fd = self._poke[1]

        def poke() -> None:
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
                os.write(fd, b"t")

        return poke

    # -- workers -------------------------------------------------------------

    def _spawn(self) -> None:
        parent = os.getpid()
        # Block signals across fork so the child never runs our handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._become_worker(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_SIGNALS)
        self.workers[pid] = (self._owner(pid), time.monotonic())
        self._publish()
        log.info("started worker %d", pid)

    def _become_worker(self, parent: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_SIGNALS)
            _close_pipe(self._pipe)
            if self._poke is not None:
                os.close(self._poke[0])
            self.store.close()  # its descriptors are the supervisor's; closing never unlocks
            die_with_parent(parent)
            store = self.location.open(lease=self.lease)
            run_worker(store, self.location.files(), self.registry, concurrency=self.concurrency,
                       lease=self.lease, poke=self._poke_fn(), owner=self._owner(os.getpid()))
            code = 0
        except StoreIOError as exc:  # a claim's write, say, outside any one task
            exit_store_failed(exc)
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _reap(self, block: bool = False) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.workers.pop(pid, None)
            if entry is None:
                continue
            owner, started = entry
            store_failed = os.waitstatus_to_exitcode(status) in (EXIT_STORE_FAILED, EXIT_STORE_FULL)
            # A store that could not be written is not what the branches did: no attempt spent.
            killed = self._killed or pid in self._fenced
            self._fenced.discard(pid)
            self._unreleased[owner] = (_describe(status), not killed and not store_failed)
            released = self._give_back()
            if store_failed:
                self._store_failed(pid, status, started)
            else:
                self._store_failures = 0
                log.log(logging.INFO if self._draining or self._killed else logging.WARNING,
                        "worker %d exited (%s); released %d claims", pid, _describe(status), released)
                if not self._draining:
                    quick = time.monotonic() - started < QUICK_DEATH
                    self._restart_at.append(time.monotonic() + (RESTART_PAUSE if quick else 0.0))
            self._publish()

    def _give_back(self) -> int:
        """Release the claims of dead workers; on a full disk, keep them for the next tick."""
        released = 0
        for owner, (how, counted) in list(self._unreleased.items()):
            try:
                released += len(self.store.release_owner(owner, how=how, decide=self.after_death,
                                                          counted=counted))
            except (StoreFull, *UNREACHABLE) as exc:
                if self._embedded or (self.shared is None and not isinstance(exc, StoreFull)):
                    raise
                return released  # the link is down: given back when it returns (if nobody did)
            del self._unreleased[owner]
        return released

    def _store_failed(self, pid: int, status: int, started: float) -> None:
        """A worker exited because its write failed: say so once per restart, restart ever slower."""
        full = os.waitstatus_to_exitcode(status) == EXIT_STORE_FULL
        reason = "the disk is full" if full else "a write or sync failed"
        if self._embedded:
            raise (StoreFull if full else StoreIOError)(
                f"a worker could not write the store at {self.location} ({reason}); the run is kept on disk")
        if time.monotonic() - started >= STORE_PAUSE_MAX * 2:
            self._store_failures = 0  # it had worked for a while: a new episode
        pause = min(STORE_PAUSE_MAX, STORE_PAUSE * 2 ** self._store_failures)
        self._store_failures += 1
        if not self._draining:
            self._restart_at.append(time.monotonic() + pause)
            log.warning("worker %d could not write the store (%s); restarting it in %.1f s",
                        pid, reason, pause)

    def _sweep(self) -> None:
        """The tick's backstop: deaths nobody saw, deadlines, and claims a full disk kept."""
        self._store_call(self._give_back)
        if not self._sweeps():
            return
        self._store_call(lambda: self.store.expire(decide=self.after_death))
        if self.retention is not None:
            self._store_call(lambda: self.retention.due(self.store))  # type: ignore[union-attr]

    def _store_call(self, call: Callable[[], Any]) -> Any:
        """A write of the loop's own; on a full disk, said now and then and tried again later."""
        try:
            return call()
        except StoreFull as exc:
            if self._embedded:
                raise
            now = time.monotonic()
            if now >= self._full_said_at + STORE_PAUSE_MAX * 2:
                self._full_said_at = now
                log.warning("%s; the supervisor goes on and retries", exc)
            return None
        except UNREACHABLE:
            if self.shared is None or self._embedded:
                raise
            return None  # a shared store out of reach: SharedSupervision says so, once

    # -- several supervisors on one store (shared.py) ----------------------------

    def _owner(self, pid: int) -> str:
        return owner_id(pid) if self.shared is None else self.shared.owner(pid)

    def _sweeps(self) -> bool:
        """Whether we fire timers, time out deadlines and expire leases: the one
        supervisor of a directory store does; on a shared store, the sweep lock's holder."""
        return self.shared is None or self.shared.sweeping

    def _shared_due(self) -> list[float]:
        return [] if self.shared is None else [self.shared.due()]

    def _shared_tick(self) -> None:
        if self.shared is None or self.shared.due() > time.monotonic() or self.shared.tick():
            return
        # Declared dead while cut off: our workers' claims were given to others. Whatever
        # they still run is stale (fenced by the claims' counters): kill them, join again.
        old = self.shared.rejoin()
        log.warning("this supervisor (%s) was declared dead: its heartbeats lapsed and its claims were "
                    "taken; killing its %d workers and rejoining as %s", old, len(self.workers),
                    self.shared.sid)
        self._fenced |= set(self.workers)
        self._signal_all(signal.SIGKILL)
        self._publish()

    def _restart_due(self) -> None:
        now = time.monotonic()
        due = [t for t in self._restart_at if t <= now]
        self._restart_at = [t for t in self._restart_at if t > now]
        for _ in due:
            if not self._draining:
                self._spawn()

    def _drain(self) -> None:
        if not self._draining:
            log.info("draining: no new claims; running branches finish")
            self._draining = True
            self._restart_at.clear()
            self._signal_all(signal.SIGTERM)

    def _kill_all(self) -> None:
        """SIGKILL every worker. What they ran was not what killed them, so those deaths
        give their claims back without spending an attempt."""
        self._killed = True
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _publish(self) -> None:
        """Describe us for `runner status`; a full disk (or a store out of reach) leaves the last
        description in place."""
        with contextlib.suppress(OSError, *UNREACHABLE):
            self.store.publish_supervisor({
                "pid": os.getpid(), "started": self.started, "workers": sorted(self.workers),
                "id": None if self.shared is None else self.shared.sid, "host": socket.gethostname(),
                "owners": {str(pid): owner for pid, (owner, _) in self.workers.items()},
                "concurrency": self.concurrency,
            })


    def after_death(self, promise: Promise, task: Task, error: dict[str, Any]) -> float | None:
        """The delay before the attempt after a death, by the function's retry policy;
        None when the policy is spent (the store rejects the promise with `error`).

        The first re-run after a death starts at once: one death is most often the
        machine's doing (a kill, the OOM killer), and a killed branch should run again in
        milliseconds. A death right after a death waits the policy's delay, so a function
        that kills its worker cannot crash-loop faster than its backoff.
        """
        try:
            policy = policy_of(promise, self.registry.lookup(promise.func).retry)
        except UnknownFunction:
            return 0.0  # the worker that claims it rejects it by name
        delay = policy.next_delay(task.attempt, WorkerDied(promise.id, error.get("message", "")))
        if delay is None:
            return None
        return delay if died(task.last_error) else 0.0


class LockWatchdog:
    """Frees the store lock from a worker of ours that was stopped while holding it.

    A stopped holder (SIGSTOP, a debugger) freezes every process of the store, this
    supervisor's own loop included, and no lease helps, since acting on one needs the
    lock. So this runs on a thread of its own, which never takes the lock. Killing the
    worker is safe at any instant, as any crash is; the loop then reaps it and gives
    its claims back. A stopped process that is not ours is only named, by whoever
    waits for the lock (see store/log.py).
    """

    def __init__(self, store: PromiseStore, ours: Callable[[], set[int]]) -> None:
        self._store = store
        self._ours = ours
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-watchdog", daemon=True)
        self._stopped_since: dict[int, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(LOCK_WATCH):
            try:
                self.check(time.monotonic())
            except Exception:  # a watchdog that dies would leave the next freeze unseen
                log.exception("lock watchdog check failed")

    def check(self, now: float) -> None:
        try:
            ours = self._ours()
        except RuntimeError:  # the workers changed while we copied them: look next time
            return
        stopped = {pid for pid in self._store.lock_holders() if pid in ours and is_stopped(pid)}
        self._stopped_since = {pid: self._stopped_since.get(pid, now) for pid in stopped}
        for pid, since in self._stopped_since.items():
            if now - since >= STOPPED_HOLDER:
                log.error("worker %d was stopped for %.0f s holding the store lock; killing it to free the "
                          "store", pid, now - since)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _close_pipe(pipe: tuple[int, int] | None) -> None:
    for fd in pipe or ():
        os.close(fd)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
