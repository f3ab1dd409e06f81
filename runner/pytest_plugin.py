"""pytest fixtures for crash tests of your own workflows, with real processes.

Installing fanout-runner registers this plugin (entry point `pytest11`); nothing to enable.

- `runner_store`: a fresh store directory under the test's tmp_path (override it to
  return a postgresql:// URL, a fresh `?schema=` per test, to test on PostgreSQL).
- `runner_app`: the app modules, from `--runner-app MODULE` (repeatable), else the ini
  option `runner_app`, else what the CLI would find ($RUNNER_APP, `[tool.runner] app`).
  Override the fixture to choose in code.
- `runner_supervisor`: a runner.LocalSupervisor on that store with that app (ini
  `runner_workers`, default 2), up when the test starts; it kills its workers (or
  itself) when a promise runs (`kill_when_running`), restarts, and is killed, with every
  process it ran checked gone, when the test ends, passed, failed or interrupted. It
  dies with the test process too, even one killed outright.
- `runner_client`: a runner.Client on that store; `runner_client.history(run_id)` tells
  how often each function ran and how each execution ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .client import Client
from .local import LocalSupervisor


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runner", "fanout-runner")
    group.addoption("--runner-app", action="append", default=[], metavar="MODULE",
                    help="module registering the functions under test (repeatable)")
    parser.addini("runner_app", "modules registering the functions under test", type="args", default=[])
    parser.addini("runner_workers", "worker processes of the runner_supervisor fixture", default="2")


@pytest.fixture
def runner_app(request: pytest.FixtureRequest) -> list[str]:
    """The app modules; empty means: as the CLI finds them ($RUNNER_APP, pyproject.toml)."""
    chosen: list[str] = request.config.getoption("runner_app") or request.config.getini("runner_app")
    return list(chosen)


@pytest.fixture
def runner_store(tmp_path: Path) -> Path:
    """A store path that does not exist yet: the first process to open it creates it."""
    return tmp_path / "runner-store"


@pytest.fixture
def runner_supervisor(runner_store: Path, runner_app: list[str],
                      request: pytest.FixtureRequest) -> Iterator[LocalSupervisor]:
    supervisor = LocalSupervisor(runner_store, runner_app, cwd=request.config.rootpath,
                                 workers=int(request.config.getini("runner_workers")))
    supervisor.start()
    try:
        yield supervisor
    finally:
        # Killed, not drained: what the test left running is of no use to anyone now.
        supervisor.close()


@pytest.fixture
def runner_client(runner_store: Path, runner_app: list[str],
                  request: pytest.FixtureRequest) -> Iterator[Client]:
    with Client(runner_store, runner_app, cwd=request.config.rootpath) as client:
        yield client
