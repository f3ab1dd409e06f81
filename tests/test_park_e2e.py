"""Replay that takes another path parks the workflow; fixed code resumes it. Errors keep their shape.

Real processes throughout: `drifting` (tests/apps/e2e.py) picks its first child's
arguments by whether a flag file exists, and waits for a person between its two
children, so a test can flip the flag while it is suspended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from runner.owners import owner_pid
from tests.e2e_support import Workspace, result_of
from tests.helpers import kill_group, wait_until


def labels(trace: Path) -> Counter[str]:
    """How often each `counted` leaf ran, from its own trace."""
    return Counter(json.loads(line)["label"] for line in trace.read_text().splitlines())


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("runner: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for part in parts:
        assert part in done.stderr, done.stderr


def parked(ws: Workspace, promise_id: str) -> bool:
    task = ws.store.task(promise_id)
    return task is not None and task.state == "parked"


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_diverging_replay_is_parked_shown_and_resumed_by_retry(ws: Workspace) -> None:
    flag, trace = ws.root / "flag", ws.root / "trace.jsonl"
    args = ("--arg", json.dumps(str(flag)), "--arg", json.dumps(str(trace)))
    ws.start(workers=2)
    assert ws.cli("invoke", "drifting", "--no-wait", "--id", "dr", *args).returncode == 0
    wait_until(lambda: ws.store.get("dr.1") is not None and ws.store.task("dr").state == "waiting",
               timeout=20, message="the workflow never waited for its approval")

    # Flip the flag, and make the workflow replay: kill the worker that has it in memory.
    flag.touch()
    holder = ws.store.task("dr")
    assert holder is not None and holder.affinity is not None
    os.kill(owner_pid(holder.affinity), signal.SIGKILL)
    wait_until(lambda: ws.store.task("dr").affinity is None, timeout=10, message="death not seen")
    assert ws.cli("promises", "resolve", "dr.1", "--value", '"ok"').returncode == 0
    wait_until(lambda: parked(ws, "dr"), timeout=20, message="the workflow was not parked")

    assert ws.get("dr").state == "pending"  # parked, not rejected
    assert ws.claim_of("dr") is None  # its claim was released
    got = json_of(ws.cli("promises", "get", "dr", "--json"))
    assert got["task"]["state"] == "parked" and got["error"] is None
    assert got["parked"]["error"]["type"] == "NonDeterminism"
    assert "replay called counted with other arguments" in got["parked"]["error"]["message"]
    assert got["parked"]["resume"] == "runner promises retry dr"
    shown = ws.cli("promises", "get", "dr").stdout
    assert "parked" in shown and "'runner promises retry dr' resumes it" in shown
    node = json_of(ws.cli("tree", "dr", "--json"))
    assert node["task"] == "parked" and node["parked"]["error"]["type"] == "NonDeterminism"
    assert "pending (parked)" in ws.cli("tree", "dr").stdout
    status = json_of(ws.cli("status", "--json"))
    assert status["queue"]["parked"] == 1
    assert [(p["id"], p["func"], p["resume"]) for p in status["parked"]] == [
        ("dr", "drifting", "runner promises retry dr")]
    assert "(resume: runner promises retry dr)" in ws.cli("status").stdout
    # Waiting on it would wait for a fix the running workers cannot load: invoke says so.
    one_line_error(ws.cli("invoke", "drifting", "--id", "dr", *args), 4, "run dr is parked",
                   "'runner promises retry dr'")
    one_line_error(ws.cli("promises", "retry", "nope"), 2, "nope")
    one_line_error(ws.cli("promises", "retry", "dr.0"), 2, "not parked (it is resolved)")

    flag.unlink()  # the fix
    done = ws.cli("promises", "retry", "dr")
    assert done.returncode == 0 and done.stdout.count("\n") == 1 and "dr resumed" in done.stdout
    assert result_of(ws.invoke("drifting", str(flag), str(trace), promise_id="dr")) == [
        "first", "ok", "last"]
    assert labels(trace) == {"first": 1, "last": 1}  # settled children never ran again
    one_line_error(ws.cli("promises", "retry", "dr"), 2, "not parked (it is resolved)")


def test_an_embedded_invoke_parks_exits_4_and_resumes_once_fixed(ws: Workspace) -> None:
    """No `runner start`: the invoke's own supervisor parks the run, and the next one resumes it."""
    flag, trace = ws.root / "flag", ws.root / "trace.jsonl"
    first = ws.background("invoke", "drifting", "--id", "em", "--arg", json.dumps(str(flag)),
                          "--arg", json.dumps(str(trace)), name="first")
    wait_until(lambda: ws.store.get("em.1") is not None and ws.store.task("em").state == "waiting",
               timeout=20, message=lambda: f"the workflow never waited: {ws.stderr('first')}")
    kill_group(first)
    flag.touch()
    assert ws.cli("promises", "resolve", "em.1", "--value", '"ok"').returncode == 0

    done = ws.invoke("drifting", str(flag), str(trace), promise_id="em")
    one_line_error(done, 4, "run em is parked: non-determinism in em at child 0")
    assert done.stdout == ""
    assert parked(ws, "em") and ws.store.supervisor() is None  # nothing keeps running

    flag.unlink()
    assert result_of(ws.invoke("drifting", str(flag), str(trace), promise_id="em")) == [
        "first", "ok", "last"]
    assert labels(trace) == {"first": 1, "last": 1}


def test_errors_keep_their_shape_through_a_workflow(ws: Workspace) -> None:
    missing = ws.root / "missing.txt"
    caught = result_of(ws.invoke("error_shapes", str(missing), promise_id="es"))

    common = {"errno": None, "filename": None, "child_failed": False}
    assert caught["key"] == {**common, "class": "KeyError", "str": "'k'", "args": ["k"],
                             "value_error": False, "bad_input": False}
    assert caught["missing"] == {
        **common, "class": "FileNotFoundError", "str": f"[Errno 2] No such file or directory: '{missing}'",
        "args": [2, "No such file or directory"], "errno": 2, "filename": str(missing),
        "value_error": False, "bad_input": False}
    # A user's class imported in the awaiting worker (the app is loaded there) comes back as itself.
    assert caught["user"] == {**common, "class": "BadInput", "str": "no such order",
                              "args": ["no such order"], "value_error": True, "bad_input": True}
    # One defined inside a function cannot be found: ChildFailed, still caught as a ValueError.
    assert caught["local"] == {**common, "class": "ChildFailed[ValueError]",
                               "str": "Unreachable: defined inside a function",
                               "args": ["Unreachable: defined inside a function"], "child_failed": True,
                               "value_error": True, "bad_input": False}
    stored = ws.get("es.2").value
    assert stored["type"] == "BadInput" and stored["message"] == "no such order"
    assert (stored["module"], stored["qualname"], stored["base"]) == ("tests.apps.e2e", "BadInput",
                                                                      "ValueError")
