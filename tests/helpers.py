"""Plain helpers for process tests: drive the real CLI, wait on conditions, reap groups.

Fixtures built on these live in conftest.py; these stay importable on their own so a
benchmark or a script can use them too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent

# Variables a test must set on purpose: inherited from the developer's shell they would
# point a test at a store or an outbox it does not own.
_ISOLATED_VARS = ("RUNNER_STORE", "NOTIFY_OUTBOX", "RUNNER_EFFECTS")

T = TypeVar("T")

# What the `processes` fixture yields: spawn(argv, store=None, env=None, **popen_kwargs).
Spawn = Callable[..., "subprocess.Popen[Any]"]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises AssertionError carrying `message` (a string, or a callable evaluated only on
    failure, so it can describe the state at that moment) once `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s)")
        time.sleep(min(interval, remaining))


def runner_cmd(*args: str) -> list[str]:
    """The argv that runs the CLI under the interpreter running the tests."""
    return [sys.executable, "-m", "runner", *args]


def cli_env(
    store: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Environment for a CLI child process.

    PYTHONPATH starts with the repo root so `examples` imports; RUNNER_STORE and
    NOTIFY_OUTBOX are set only when the caller asks (`store`, or `env`). A value of None
    in `env` removes that variable.
    """
    result = {k: v for k, v in os.environ.items() if k not in _ISOLATED_VARS}
    inherited = result.get("PYTHONPATH")
    result["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + inherited if inherited else "")
    # Output reaches a test as it is printed, not when a buffer fills.
    result["PYTHONUNBUFFERED"] = "1"
    for key, value in (env or {}).items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    if store is not None:
        result["RUNNER_STORE"] = os.fspath(store)
    return result


def run_cli(
    *args: str,
    store: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 60,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `runner ARGS...` to completion and capture its text output.

    `--store` is never added: pass it in `args` to test the option, or `store=` to set
    RUNNER_STORE. The command runs in its own process group; if it outlives `timeout`,
    the whole group (workers included) is killed and the test fails with its output.
    """
    cmd = runner_cmd(*args)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(store, env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid)
        stdout, stderr = proc.communicate()  # reads what is left, reaps the leader
        _wait_group_gone(proc.pid)
        raise AssertionError(
            f"{' '.join(args)!r} did not finish within {timeout:g}s\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in process group `pgid`."""
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def _signal_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nobody left in the group
        os.killpg(pgid, signal.SIGKILL)


def _wait_group_gone(pgid: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def kill_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGKILL the process group led by `proc` and reap the leader.

    `proc` must have been started with start_new_session=True, so its pid is its group
    id. The group is killed even if the leader already exited: orphaned workers keep the
    group alive. Grandchildren are reaped by init, not by us, so we only wait (briefly,
    best effort) until none of them is still running.
    """
    _signal_group(proc.pid)
    proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    _wait_group_gone(proc.pid)


# -- PostgreSQL: each test gets a schema of its own in this database, dropped after it ----------

PG_DATABASE = os.environ.get("RUNNER_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
_pg_reason: list[str | None] = []


def pg_unreachable() -> str | None:
    """Why the PostgreSQL tests cannot run here (None: they can), found once per session."""
    if not _pg_reason:
        try:
            import psycopg
        except ImportError:
            _pg_reason.append("psycopg is not installed (pip install 'fanout-runner[postgres]')")
        else:
            try:
                psycopg.connect(PG_DATABASE, connect_timeout=3).close()
                _pg_reason.append(None)
            except psycopg.Error as exc:
                _pg_reason.append(f"no PostgreSQL at {PG_DATABASE}: {str(exc).strip().splitlines()[0]}")
    return _pg_reason[0]


def new_pg_schema() -> str:
    """A store URL naming a schema nobody uses yet (the store creates it at first use)."""
    return f"{PG_DATABASE}?schema=t_{os.getpid()}_{time.monotonic_ns() % 10**12}"


def drop_pg_schema(url: str) -> None:
    import psycopg
    from psycopg import sql

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_DATABASE, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
