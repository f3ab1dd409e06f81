"""Shared fixtures: reaped child processes, a fresh store path, Hypothesis profiles."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.e2e_support import Workspace
from tests.helpers import Spawn, cli_env, drop_pg_schema, kill_group, new_pg_schema, pg_unreachable

# Process tests are slow per example and timing varies on a loaded 2-core machine:
# no per-example deadline, and a bounded number of examples.
settings.register_profile("ci", deadline=None, max_examples=60)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def processes() -> Iterator[Spawn]:
    """Factory: `processes(argv, store=None, env=None, **popen_kwargs) -> Popen`.

    Each process starts in its own session (so its pid is its process group id) with the
    same environment as `run_cli`. At teardown every group is SIGKILLed, including
    workers whose leader already exited, and every leader is reaped.
    """
    started: list[subprocess.Popen[Any]] = []

    def spawn(
        argv: Sequence[str],
        *,
        store: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        **popen_kwargs: Any,
    ) -> subprocess.Popen[Any]:
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(
            list(argv), env=cli_env(store, env), start_new_session=True, **popen_kwargs
        )
        started.append(proc)
        return proc

    yield spawn

    errors: list[BaseException] = []
    for proc in reversed(started):
        try:
            kill_group(proc)
        except Exception as exc:  # keep going: one stuck process must not leak the rest
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store path under tmp_path that does not exist yet: the store creates it."""
    return tmp_path / "store"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test of a store (through `backend`) runs on both stores, unless it also asks for
    `store_dir`: it looks at the directory store's files, and runs on that one only."""
    if "backend" in metafunc.fixturenames:
        kinds = ["dir"] if "store_dir" in metafunc.fixturenames else ["dir", "pg"]
        metafunc.parametrize("backend", kinds, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_location(backend: str, tmp_path: Path) -> Iterator[str]:
    """Where a test's store is: a directory, or a fresh PostgreSQL schema dropped after it
    (skipped, with the reason, where no PostgreSQL is reachable)."""
    if backend == "dir":
        yield str(tmp_path / "store")
        return
    reason = pg_unreachable()
    if reason is not None:
        pytest.skip(reason)
    url = new_pg_schema()
    yield url
    drop_pg_schema(url)


@pytest.fixture
def ws(tmp_path: Path, processes: Spawn) -> Iterator[Workspace]:
    """A workspace for end-to-end runs: a store, an outbox, CLI helpers, reaped processes."""
    work = tmp_path / "work"
    work.mkdir()
    space = Workspace(work, processes)
    yield space
    space.close()


@pytest.fixture
def any_ws(tmp_path: Path, processes: Spawn, backend: str, store_location: str) -> Iterator[Workspace]:
    """A workspace as `ws`, once on each store: a test using it runs on both."""
    work = tmp_path / "work"
    work.mkdir()
    space = Workspace(work, processes, store_location if backend == "pg" else None)
    yield space
    space.close()
