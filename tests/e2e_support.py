"""Shared set-up of the runner's end-to-end tests: one work directory, its store, its outbox.

Every CLI process runs in the work directory with the example apps and `tests.apps.e2e`
loaded, `--store` pointing at the test's store and the notify outbox beside it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.notify import read_outbox
from runner.store import Promise, PromiseStore, open_store
from tests.helpers import Spawn, run_cli, runner_cmd, wait_until

APPS = ("examples.notify,examples.fan_out,examples.fanout_rpc,examples.factorial,tests.apps.e2e,"
        "tests.apps.robust,tests.apps.timers")
CHANNELS = ("email", "sms", "slack", "push")


def event(order_id: str, **delays: float) -> dict[str, Any]:
    """A notify event with per-channel delays in seconds."""
    return {"order_id": order_id, "delays": delays}


@dataclass
class Workspace:
    """A work directory under tmp_path; the outbox lives inside it, and the store too unless
    `url` names a PostgreSQL one."""

    root: Path
    spawn: Spawn
    url: str | None = None
    _store: PromiseStore | None = field(default=None, repr=False)

    @property
    def store_dir(self) -> Path:
        """The directory store's directory (only tests of the directory store look inside)."""
        assert self.url is None, "a PostgreSQL store has no directory"
        return self.root / "store"

    def exists(self) -> bool:
        """Whether the store was made (a test must not make it first: a PostgreSQL schema is
        made by whoever connects, which changes nothing a test looks at)."""
        return self.url is not None or self.store_dir.exists()

    @property
    def location(self) -> str:
        """What `--store` is given."""
        return self.url if self.url is not None else str(self.store_dir)

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.jsonl"

    def env(self, extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
        return {"RUNNER_APP": APPS, "NOTIFY_OUTBOX": str(self.outbox), **(extra or {})}

    def cli(self, *args: str, env: Mapping[str, str | None] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one command to completion (its whole process group is reaped)."""
        return run_cli(*args, "--store", self.location, env=self.env(env), cwd=self.root,
                       timeout=timeout)

    def invoke(self, func: str, *args: Any, promise_id: str | None = None,
               extra: tuple[str, ...] = (), env: Mapping[str, str | None] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`runner invoke FUNC --json`, each of `args` as one `--arg` in JSON."""
        argv = ["invoke", func, "--json", *extra]
        for arg in args:
            argv += ["--arg", json.dumps(arg)]
        if promise_id is not None:
            argv += ["--id", promise_id]
        return self.cli(*argv, env=env, timeout=timeout)

    def background(self, *args: str, env: Mapping[str, str | None] | None = None,
                   name: str = "bg") -> subprocess.Popen[str]:
        """A command left running, its stderr in a file: the fixture kills and reaps its group."""
        log = (self.root / f"{name}.stderr").open("w")
        try:
            return self.spawn(runner_cmd(*args, "--store", self.location), env=self.env(env),
                              cwd=self.root, stdout=subprocess.PIPE, stderr=log, text=True)
        finally:
            log.close()  # the child holds its own copy

    def start(self, workers: int = 2, env: Mapping[str, str | None] | None = None,
              name: str = "supervisor", extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """`runner start` in the background, returned once its workers are forked."""
        proc = self.background("start", "--workers", str(workers), *extra, env=env, name=name)

        def up() -> bool:
            assert proc.poll() is None, f"supervisor exited {proc.returncode}: {self.stderr(name)}"
            info = self.store.supervisor() or {}
            return info.get("pid") == proc.pid and len(info.get("workers", [])) == workers

        wait_until(up, timeout=20, message=lambda: f"supervisor not up: {self.stderr(name)}")
        return proc

    def stderr(self, name: str) -> str:
        path = self.root / f"{name}.stderr"
        return path.read_text() if path.exists() else ""

    @property
    def store(self) -> PromiseStore:
        """The store, opened from the test process (created if no process has yet)."""
        if self._store is None:
            self._store = open_store(self.location)
        return self._store

    def supervisor(self) -> dict[str, Any]:
        """What the running supervisor published: its pid, its workers' pids."""
        info = self.store.supervisor()
        assert info is not None, "no supervisor is running"
        return info

    def get(self, promise_id: str) -> Promise:
        found = self.store.get(promise_id)
        assert found is not None, f"no promise {promise_id!r}"
        return found

    def settled(self, *ids: str) -> bool:
        found = [self.store.get(i) for i in ids]
        return all(p is not None and p.settled for p in found)

    def claim_of(self, promise_id: str) -> str | None:
        """The owner holding a claim on the promise, if any."""
        return next((t.owner for t in self.store.claims() if t.id == promise_id), None)

    def sends(self) -> list[dict[str, Any]]:
        return read_outbox(self.outbox) if self.outbox.exists() else []

    def deliveries(self) -> Counter[str]:
        return Counter(line["channel"] for line in self.sends())

    def files_outside_store(self) -> list[str]:
        """Everything under the work directory but the store, the outbox and our logs."""
        found = []
        for path in self.root.rglob("*"):
            if path == self.store_dir or self.store_dir in path.parents:
                continue
            if path == self.outbox or path.name.endswith(".stderr"):
                continue
            found.append(str(path.relative_to(self.root)))
        return sorted(found)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None




def result_of(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a `--json` invoke printed; fails the test with its output if it did not succeed."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.monotonic()
    value = fn(*args, **kwargs)
    return value, time.monotonic() - started
