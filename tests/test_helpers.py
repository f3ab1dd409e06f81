"""The test helpers themselves: polling with a deadline, CLI environment, reaping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO_ROOT, Spawn, cli_env, kill_group, runner_cmd, wait_until


def test_wait_until_returns_the_truthy_value() -> None:
    assert wait_until(lambda: "ready", timeout=1) == "ready"


def test_wait_until_polls_until_the_condition_holds() -> None:
    calls: list[None] = []

    def third_time() -> bool:
        calls.append(None)
        return len(calls) >= 3

    assert wait_until(third_time, timeout=5, interval=0.001) is True
    assert len(calls) == 3


def test_wait_until_times_out_with_the_message() -> None:
    with pytest.raises(AssertionError, match="store never opened"):
        wait_until(lambda: False, timeout=0.05, message="store never opened")


def test_wait_until_builds_a_lazy_message_only_on_failure() -> None:
    built: list[None] = []

    def describe() -> str:
        built.append(None)
        return "state: still pending"

    wait_until(lambda: True, timeout=1, message=describe)
    assert built == []
    with pytest.raises(AssertionError, match="state: still pending"):
        wait_until(lambda: 0, timeout=0.02, message=describe)


def test_runner_cmd_uses_this_interpreter() -> None:
    assert runner_cmd("invoke", "f") == [sys.executable, "-m", "runner", "invoke", "f"]


def test_cli_env_sets_only_what_the_caller_asks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNNER_STORE", "/somewhere/else")
    monkeypatch.setenv("NOTIFY_OUTBOX", "/somewhere/outbox.jsonl")
    monkeypatch.setenv("DROP_ME", "x")

    env = cli_env()
    assert "RUNNER_STORE" not in env
    assert "NOTIFY_OUTBOX" not in env
    assert env["PYTHONPATH"].split(":")[0] == str(REPO_ROOT)

    outbox = str(tmp_path / "outbox.jsonl")
    env = cli_env(tmp_path / "store", {"NOTIFY_OUTBOX": outbox, "DROP_ME": None})
    assert env["RUNNER_STORE"] == str(tmp_path / "store")
    assert env["NOTIFY_OUTBOX"] == outbox
    assert "DROP_ME" not in env


def test_store_dir_is_fresh_and_not_created(store_dir: Path, tmp_path: Path) -> None:
    assert store_dir.parent == tmp_path
    assert not store_dir.exists()


# A leader that starts a grandchild in its own group, prints the grandchild's pid, exits.
_ORPHAN_MAKER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
"""


def test_kill_group_kills_workers_whose_leader_already_exited(processes: Spawn) -> None:
    leader = processes([sys.executable, "-c", _ORPHAN_MAKER], stdout=subprocess.PIPE, text=True)
    assert leader.stdout is not None
    orphan_pid = int(leader.stdout.readline())
    leader.wait(timeout=30)
    orphan = psutil.Process(orphan_pid)
    assert orphan.is_running()

    kill_group(leader)

    def orphan_gone() -> bool:
        try:
            return orphan.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(orphan_gone, timeout=10, message=f"orphan {orphan_pid} survived kill_group")
