"""Per-call options (id, retry, timeout) and named promises, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from runner.retry import RETRY_TAG
from runner.store import State
from tests.e2e_support import Workspace, result_of
from tests.helpers import wait_until


def test_a_per_call_retry_policy_overrides_the_functions(ws: Workspace, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # fails_until has one attempt of its own; the call gives it three.
    assert result_of(ws.invoke("retried_per_call", str(runs), 2, "ValueError", 3, promise_id="r",
                               extra=("--workers", "2"))) == 3
    assert ws.get("r.0").tags[RETRY_TAG]["attempts"] == 3 and ws.get("r.0").attempt == 3


def test_a_per_call_policy_keeps_its_non_retryable_classes(ws: Workspace, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert result_of(ws.invoke("retried_per_call", str(runs), 2, "KeyError", 5, promise_id="k",
                               extra=("--workers", "1"))) == "failed: KeyError"
    assert runs.read_text() == "x"  # one run: KeyError is not retried
    assert ws.get("k.0").tags[RETRY_TAG]["non_retryable"] == ["builtins.KeyError"]


def test_a_child_timeout_inside_a_longer_parent_deadline(ws: Workspace) -> None:
    done = ws.invoke("child_timeout", 5, 0.3, promise_id="ct", extra=("--workers", "2", "--timeout", "30s"))
    assert result_of(done) == "child timed out"
    child, parent = ws.get("ct-job"), ws.get("ct")
    assert child.parent == "ct" and child.state is State.REJECTED_TIMEDOUT
    assert child.timeout is not None and parent.timeout is not None and child.timeout < parent.timeout


def test_a_child_deadline_is_never_later_than_its_parents(ws: Workspace) -> None:
    done = ws.invoke("child_timeout", 0.0, 600, promise_id="cp", extra=("--workers", "1", "--timeout", "20s"))
    assert result_of(done) == "done"
    assert ws.get("cp-job").timeout == ws.get("cp").timeout


def test_a_named_promise_is_settled_by_its_known_id(ws: Workspace) -> None:
    ws.start(workers=2)
    assert ws.cli("invoke", "named_approval", "--no-wait", "--id", "o1", "--arg", '"o1"').returncode == 0
    wait_until(lambda: ws.store.get("approval-o1") is not None, timeout=20, message="never created")
    approval = ws.get("approval-o1")
    assert approval.parent == "o1" and approval.tags["kind"] == "approval" and approval.timeout is not None
    listed = ws.cli("promises", "list", "--tag", "kind=approval", "--state", "pending", "--json")
    assert [p["id"] for p in json.loads(listed.stdout)["items"]] == ["approval-o1"], listed.stderr
    none = ws.cli("promises", "list", "--tag", "kind=other", "--json")
    assert json.loads(none.stdout)["items"] == []
    bad = ws.cli("promises", "list", "--tag", "kind")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    assert ws.cli("promises", "resolve", "approval-o1", "--value", '"yes"').returncode == 0
    assert result_of(ws.invoke("named_approval", "o1", promise_id="o1")) == {"order": "o1", "decision": "yes"}
