"""Retention from the command line: `runner gc` by hand, `runner start --retain` on a schedule."""

from __future__ import annotations

import json

from tests.e2e_support import Workspace, event, result_of
from tests.helpers import wait_until

FAST = {"email": 0.01, "sms": 0.01, "slack": 0.01, "push": 0.01}


def test_gc_by_hand_removes_old_runs_whole_and_keeps_the_rest(ws: Workspace) -> None:
    result_of(ws.invoke("notify_all", event("o-1", **FAST), promise_id="old"))
    done = ws.cli("gc", "--older-than", "1d")
    assert done.returncode == 0 and "removed 0 runs" in done.stdout  # nothing that old
    done = ws.cli("gc", "--older-than", "1ms", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"removed": ["old"]}
    assert ws.store.get("old") is None and ws.store.children("old") == []
    assert ws.cli("promises", "get", "old").returncode != 0


def test_gc_rejects_a_bad_age_in_one_line(ws: Workspace) -> None:
    done = ws.cli("gc", "--older-than", "soon")
    assert done.returncode == 2 and "is not a duration" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_supervisor_with_retain_removes_what_aged_out(ws: Workspace) -> None:
    ws.start(extra=("--retain", "1s", "--gc-every", "200ms"))
    result_of(ws.invoke("notify_all", event("o-2", **FAST), promise_id="aging"))
    assert ws.store.get("aging") is not None
    wait_until(lambda: ws.store.get("aging") is None, timeout=20,
               message=lambda: f"not removed: {ws.stderr('supervisor')}")
    assert ws.store.get("aging.0") is None
