"""A real supervisor with real worker processes, for the length of a `with` block.

    with runner.LocalSupervisor(".runner", app="myapp", workers=2) as supervisor:
        client.run(notify_all, {"order_id": "o-1"})

It is `runner start` in a process group of its own: ready when the block starts (its
published description names all of its workers), and gone when the block ends,
whatever the block raised (the whole group is killed; each process is checked gone by
pid and start time, since a pid may be reused). It also dies with the process that
started it, even one killed outright, through the kernel's parent-death signal: note
that this signal follows the *thread* that started it, so start it from a thread that
outlives it (the main thread, in a test). For crash tests it kills its workers, or
itself, when a given promise is running, and restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from runner.store import CHANGES, Execution, History, PromiseStore, open_history

from .errors import RunnerError, SupervisorFailed
from .location import StoreLocation, Where
from .owners import owner_id
from .registry import registry

READY_TIMEOUT = 30.0  # seconds for `runner start` to import the app and fork every worker
LOOK = 0.005  # seconds between looks at what the starting supervisor has published
Proc = tuple[int, float]  # (pid, start time): a process, even after its pid is reused
# `runner start` that dies with the process starting it (argv[1] is that one's pid).
_DIE_WITH_US = ("import runpy, sys; from runner.worker import die_with_parent; "
                "die_with_parent(int(sys.argv.pop(1))); sys.argv[0] = 'runner'; "
                "runpy.run_module('runner', run_name='__main__', alter_sys=True)")


class CrashTestError(RunnerError, AssertionError):
    """A crash could not be staged as asked (the promise finished before it could be killed, say).

    An AssertionError too, so pytest reports it as a failed test with this message."""


class LocalSupervisor:
    def __init__(self, store: Where, app: str | Sequence[str] = (), *, workers: int = 2,
                 concurrency: int = 8, lease: float | None = None, cwd: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None, ready_timeout: float = READY_TIMEOUT) -> None:
        self.location = StoreLocation(store)
        self.apps = [app] if isinstance(app, str) else list(app)
        self.size = workers
        self.concurrency = concurrency
        self.lease = lease
        self.cwd = Path(cwd) if cwd is not None else None
        self.env = dict(env) if env is not None else None
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        fd, log = tempfile.mkstemp(prefix="runner-supervisor-", suffix=".log")  # its output, for errors
        os.close(fd)
        self.log = Path(log)
        self._seen: set[Proc] = set()  # every process of ours so far, to check gone at the end
        self._store: PromiseStore | None = None
        self._history: History | None = None

    # -- starting and stopping -----------------------------------------------------

    def start(self) -> LocalSupervisor:
        """Start `runner start` and return once it has published all of its workers."""
        if self.running:
            raise SupervisorFailed(f"the local supervisor {self.pid} is already running")
        # It asks for the parent-death signal itself, first thing (see _DIE_WITH_US): a
        # preexec_fn would run between fork and exec, unsafe once this process has threads.
        argv = [sys.executable, "-c", _DIE_WITH_US, str(os.getpid()), "start", "--store", self.location.spec,
                "--workers", str(self.size), "--concurrency", str(self.concurrency), "--log-level", "info"]
        if self.lease is not None:
            argv += ["--lease", f"{self.lease}s"]
        for app in self.apps:
            argv += ["--app", app]
        with self.log.open("ab") as out:
            # A session of its own, so one group kill takes it and its workers and nothing else.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.cwd, env=self._environment(), start_new_session=True)
        self._remember(self.proc.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"  # its log says what it did up to the instant it died
        return env

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            info = self.store.supervisor() or {}
            if info.get("pid") == self.proc.pid and len(info.get("workers") or ()) >= self.size:
                for pid in info["workers"]:
                    self._remember(pid)
                return
            if self.proc.poll() is not None:
                raise SupervisorFailed(f"runner start exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise SupervisorFailed(f"runner start did not fork {self.size} workers within "
                                       f"{self.ready_timeout:g} s: {self.log_tail()}")
            time.sleep(LOOK)

    def stop(self, grace: float = 10.0) -> None:
        """Drain (running branches finish and are written) for up to `grace` seconds, then kill."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the supervisor and all its workers at once, and wait until every one is gone.

        The leader is reaped only after the group kill: until then its pid (the group's id)
        cannot be reused, so the kill cannot reach anyone else's processes.
        """
        if self.proc is None:
            return
        if self.proc.returncode is None:  # not reaped: its pid, the group's id, is still ours
            with contextlib.suppress(OSError):
                for pid in (self.store.supervisor() or {}).get("workers") or ():
                    self._remember(int(pid))  # the latest ones, restarts included
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:  # reaped already: the group's id may be anyone's now, so each process by its start time
            for proc in self._seen:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if not gone(proc):
                        psutil.Process(proc[0]).kill()
        self.proc.wait()
        self.proc = None
        wait_gone(self._seen)

    def restart(self) -> LocalSupervisor:
        """Kill what runs (a crash, as far as the store can tell) and start a new supervisor."""
        self.kill()
        return self.start()

    def close(self) -> None:
        """Kill everything and release what this object holds (store handles, its log file)."""
        try:
            self.kill()
        finally:
            for handle in (self._history, self._store):
                if handle is not None:
                    handle.close()
            self._history = self._store = None
            with contextlib.suppress(FileNotFoundError):
                self.log.unlink()

    def __enter__(self) -> LocalSupervisor:
        return self.start()

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            self.close()

    # -- what runs ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def workers(self) -> list[int]:
        """The pids of the workers it runs now (as it last published them)."""
        info = self.store.supervisor() if self.running else None
        return [int(pid) for pid in (info or {}).get("workers") or ()]

    @property
    def processes(self) -> set[Proc]:
        """(pid, start time) of every process it has run: the supervisors and all their workers."""
        with contextlib.suppress(OSError):
            for pid in self.workers:
                self._remember(pid)
        return set(self._seen)

    @property
    def store(self) -> PromiseStore:
        if self._store is None:
            self._store = self.location.open()
        return self._store

    def log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _remember(self, pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self._seen.add((pid, psutil.Process(pid).create_time()))

    # -- crashes ---------------------------------------------------------------------

    def kill_workers(self) -> list[int]:
        """SIGKILL every worker (the supervisor sees them die, gives their claims back and
        starts new ones); returns the pids killed, once they are gone."""
        victims = self.workers
        for pid in victims:
            self._remember(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone({p for p in self._seen if p[0] in victims})
        return victims

    def kill_when_running(self, target: str | Callable[..., Any], *, after: float = 0.0,
                          whole: bool = False, timeout: float = 10.0) -> Execution:
        """Wait until `target` (a promise id, or a function: whichever of its claims runs first) has
        been running for `after` seconds, then SIGKILL the worker running it (with `whole`,
        the supervisor and all of its workers). Returns the execution that was killed.

        A worker runs several branches at once: whatever else it runs dies with it, and
        runs again. `after` lets the short ones finish first.

        The claim is read from the store's log, so even a short one is seen; one that ended
        before the kill could land is a CrashTestError saying so (make the function slower).
        """
        history = self._follow()
        known = {(e.promise_id, e.counter) for e in history.executions()}
        deadline = time.monotonic() + timeout
        watch = self.store.watch(CHANGES)
        try:
            while True:
                runs = [e for e in history.executions() if _matches(e, target)]
                running = next((e for e in runs if e.outcome == "running"), None)
                if running is not None:
                    time.sleep(max(0.0, running.started + after - time.time()))  # the instant asked for
                    return self._kill_holder(running, whole)
                missed = next((e for e in runs if (e.promise_id, e.counter) not in known), None)
                if missed is not None:
                    raise _too_quick(missed)
                left = deadline - time.monotonic()
                if left <= 0:
                    ended = f" (it had run {len(runs)} times before, each ended: " \
                            f"{', '.join(e.outcome for e in runs)})" if runs else ""
                    raise CrashTestError(f"{_name(target)} was not running within {timeout:g} s{ended}; "
                                         f"supervisor log: {self.log_tail(3)}")
                watch.wait(min(left, 1.0))
        finally:
            watch.close()

    def _kill_holder(self, run: Execution, whole: bool) -> Execution:
        if whole:
            self.kill()
        else:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                if owner_id(run.pid) == run.owner:  # that very process, not a reuse of its pid
                    self._remember(run.pid)
                    os.kill(run.pid, signal.SIGKILL)
            wait_gone({p for p in self._seen if p[0] == run.pid})
        after = next(e for e in self._follow().executions()
                     if (e.promise_id, e.counter) == (run.promise_id, run.counter))
        if after.outcome not in ("running", "died"):
            raise _too_quick(after)
        return after

    def _follow(self) -> History:
        if self._history is None:
            self._history = open_history(self.location.history_dir())
        return self._history


def _matches(run: Execution, target: str | Callable[..., Any]) -> bool:
    if callable(target):
        return run.func == registry.name_of(target)
    return run.promise_id == target


def _too_quick(run: Execution) -> CrashTestError:
    return CrashTestError(f"{run.func} ({run.promise_id}) ended ({run.outcome}) before it could be killed: "
                          "make it run longer than a kill takes (a few milliseconds)")


def _name(target: str | Callable[..., Any]) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def gone(proc: Proc) -> bool:
    """Whether the process is dead: no such pid, another process under it since, or a zombie."""
    pid, started = proc
    try:
        process = psutil.Process(pid)
        return process.create_time() != started or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: set[Proc], timeout: float = 10.0) -> None:
    """Wait until each process is gone; a SIGKILLed one takes milliseconds."""
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in procs):
        if time.monotonic() > deadline:
            alive = sorted(pid for pid, started in procs if not gone((pid, started)))
            raise SupervisorFailed(f"processes {alive} outlived SIGKILL for {timeout:g} s")
        time.sleep(0.002)

