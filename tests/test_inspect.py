"""Inspection and operation commands against a real store, with runs made by the real CLI.

`runner promises ...`, `runner tree`, `runner status`, settling from outside (a waiting
`runner invoke` resumes), the live view of `invoke` in a pseudo-terminal, logging, and
one-line errors with their exit codes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import psutil
import pytest
from click.testing import CliRunner

from runner.cli import cli
from tests.helpers import REPO_ROOT, Spawn, cli_env, run_cli, runner_cmd, wait_until

APPS = "examples.notify,examples.approval"
ENV = {"RUNNER_APP": APPS}
FAST = {"email": 0.05, "sms": 0.05, "slack": 0.05, "push": 0.05}
SUMMARY_KEYS = {"id", "state", "func", "parent", "created_at", "settled_at", "duration", "attempt"}
DETAIL_KEYS = SUMMARY_KEYS | {"args", "tags", "timeout", "value", "error", "children", "task", "parked"}
TASK_KEYS = {"state", "attempt", "counter", "owner", "worker_pid", "expires_at", "not_before", "awaiting",
             "last_error"}
NODE_KEYS = {"id", "state", "func", "created_at", "settled_at", "duration", "task", "attempt", "worker_pid",
             "error", "children", "parked"}
STATES = {"pending", "resolved", "rejected", "rejected_canceled", "rejected_timedout"}


def cli_in(store: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--store", str(store), env={**ENV, "NOTIFY_OUTBOX": str(store.parent / "outbox")},
                   cwd=REPO_ROOT, timeout=timeout)


def json_of(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with `code` and said why on exactly one line, without a traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runner: error: "), done.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def background(processes: Spawn, store: Path, *args: str) -> subprocess.Popen[str]:
    return processes(runner_cmd(*args, "--store", str(store)), store=None, env=ENV, cwd=REPO_ROOT,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_pending(store: Path, promise_id: str, proc: subprocess.Popen[str] | None = None) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        done = cli_in(store, "promises", "get", promise_id, "--json")
        return json.loads(done.stdout) if done.returncode == 0 else None

    return wait_until(found, timeout=20, interval=0.05,
                      message=lambda: f"{promise_id} never appeared; invoke: {proc and proc.poll()}")


@pytest.fixture(scope="module")
def done_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with finished runs: `order-1` (push fails once, then retries) and `order-2`."""
    store = tmp_path_factory.mktemp("inspect") / "store"
    for root, crash in (("order-1", "true"), ("order-2", "false")):
        done = cli_in(store, "invoke", "notify_all", "--id", root, "--json",
                      "--arg", json.dumps({"order_id": root, "delays": FAST}), "--arg", crash)
        assert json_of(done)["channels_notified"] == 4
    return store


# -- promises list / get -------------------------------------------------------------------


def test_list_filters_and_pages(done_store: Path) -> None:
    everything = json_of(cli_in(done_store, "promises", "list", "--json"))
    assert set(everything) == {"items", "cursor"} and everything["cursor"] is None
    assert [p["id"] for p in everything["items"]][:5] == ["order-1", *(f"order-1.{i}" for i in range(4))]
    for item in everything["items"]:
        assert set(item) == SUMMARY_KEYS and item["state"] == "resolved"
        assert item["settled_at"] >= item["created_at"] and item["duration"] >= 0

    run = json_of(cli_in(done_store, "promises", "list", "--prefix", "order-2", "--json"))["items"]
    assert [p["func"] for p in run] == ["notify_all", "send_email", "send_sms", "send_slack", "send_push"]
    children = json_of(cli_in(done_store, "promises", "list", "--parent", "order-1", "--json"))["items"]
    assert {p["parent"] for p in children} == {"order-1"} and len(children) == 4
    assert json_of(cli_in(done_store, "promises", "list", "--state", "pending", "--json"))["items"] == []

    first = json_of(cli_in(done_store, "promises", "list", "--limit", "3", "--json"))
    assert len(first["items"]) == 3 and first["cursor"] is not None
    rest = json_of(cli_in(done_store, "promises", "list", "--cursor", str(first["cursor"]), "--json"))
    assert [p["id"] for p in first["items"] + rest["items"]] == [p["id"] for p in everything["items"]]

    text = cli_in(done_store, "promises", "list", "--limit", "3")
    assert text.returncode == 0 and "\x1b[" not in text.stdout  # plain when piped
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["order-1", "resolved", "notify_all"]
    assert lines[-1] == f"more: --cursor {first['cursor']}"


def test_get_shows_one_promise(done_store: Path) -> None:
    push = json_of(cli_in(done_store, "promises", "get", "order-1.3", "--json"))
    assert set(push) == DETAIL_KEYS
    assert push["state"] == "resolved" and push["func"] == "send_push" and push["parent"] == "order-1"
    assert push["args"] == [{"order_id": "order-1", "delays": FAST}, True]
    assert push["value"]["idempotency_key"] == "order-1.3" and push["error"] is None
    assert push["task"] is None and push["children"] == 0  # settled: no worker holds it
    root = json_of(cli_in(done_store, "promises", "get", "order-1", "--json"))
    assert root["children"] == 4 and root["value"]["channels_notified"] == 4

    text = cli_in(done_store, "promises", "get", "order-1.3").stdout
    assert "send_push" in text and "resolved" in text and '"idempotency_key": "order-1.3"' in text


# -- tree ---------------------------------------------------------------------------------------


def test_tree_of_a_finished_run(done_store: Path) -> None:
    root = json_of(cli_in(done_store, "tree", "order-1", "--json"))
    assert set(root) == NODE_KEYS and root["func"] == "notify_all" and root["state"] == "resolved"
    assert [c["id"] for c in root["children"]] == [f"order-1.{i}" for i in range(4)]
    for child in root["children"]:
        assert set(child) == NODE_KEYS and child["children"] == [] and child["state"] == "resolved"
        assert 0 < child["duration"] <= root["duration"]
    push = root["children"][3]
    assert push["duration"] >= 2 * FAST["push"]  # two attempts, the first failed

    text = cli_in(done_store, "tree", "order-1").stdout.splitlines()
    assert "\x1b[" not in "".join(text)
    assert text[0].startswith("notify_all order-1  resolved")
    assert text[1].startswith("├── send_email order-1.0  resolved")
    assert text[4].startswith("└── send_push order-1.3  resolved")


# -- status ---------------------------------------------------------------------------------------


def test_status_without_a_supervisor(done_store: Path) -> None:
    data = json_of(cli_in(done_store, "status", "--json"))
    assert set(data) == {"store", "supervisor", "supervisors", "workers", "unowned_claims", "queue",
                         "promises", "parked"}
    assert data["supervisor"] is None and data["workers"] == [] and data["unowned_claims"] == []
    assert data["queue"] == {"ready": 0, "claimed": 0, "waiting": 0, "delayed": 0, "parked": 0}
    assert set(data["promises"]) == STATES and data["promises"]["resolved"] == 10
    text = cli_in(done_store, "status").stdout
    assert text.startswith(f"no supervisor is running on {done_store}")
    assert "10 resolved" in text


def test_status_and_tree_mid_run(tmp_path: Path, processes: Spawn) -> None:
    """A supervisor runs; a slow fan-out is in flight: both commands show who runs what."""
    store = tmp_path / "store"
    supervisor = background(processes, store, "start", "--workers", "2")

    def supervising() -> bool:  # else the invoke below would run a supervisor of its own
        done = cli_in(store, "status", "--json")
        running = json.loads(done.stdout)["supervisor"] if done.returncode == 0 else None
        return running is not None and running["pid"] == supervisor.pid

    wait_until(supervising, timeout=20, interval=0.05, message="the supervisor never started")
    # Far longer than the checks below take on a loaded machine: the run is cancelled at the end.
    slow = {"email": 60.0, "sms": 60.0, "slack": 0.01, "push": 60.0}
    invoke = background(processes, store, "invoke", "notify_all", "--id", "slow", "--json",
                        "--arg", json.dumps({"order_id": "slow", "delays": slow}))

    def three_running() -> dict[str, Any] | None:
        done = cli_in(store, "status", "--json")
        if done.returncode != 0:  # the store is not there yet
            return None
        data = json.loads(done.stdout)
        running = [c for w in data["workers"] for c in w["running"]]
        return data if len(running) == 3 and data["promises"]["resolved"] == 1 else None

    data = wait_until(three_running, timeout=20, interval=0.05, message="three branches never ran")
    sup = data["supervisor"]
    assert sup["pid"] == supervisor.pid and sup["alive"] and sup["uptime"] > 0 and sup["workers"] == 2
    assert {w["pid"] for w in data["workers"]} == {c.pid for c in psutil.Process(supervisor.pid).children()}
    for worker in data["workers"]:
        assert worker["alive"] and worker["rss"] > 0 and worker["owner"].startswith(f"{worker['pid']}@")
    running = {c["id"]: c for w in data["workers"] for c in w["running"]}
    assert set(running) == {"slow.0", "slow.1", "slow.3"}
    assert running["slow.0"]["func"] == "send_email" and running["slow.0"]["attempt"] == 1
    assert running["slow.0"]["running_for"] >= 0 and running["slow.0"]["expires_in"] > 0
    assert data["queue"]["claimed"] == 3 and data["queue"]["waiting"] == 1  # the root awaits

    tree = json_of(cli_in(store, "tree", "slow", "--json"))
    assert tree["state"] == "pending" and tree["task"] == "waiting"
    email, slack = tree["children"][0], tree["children"][2]
    assert email["task"] == "claimed" and email["attempt"] == 1
    assert email["worker_pid"] in {w["pid"] for w in data["workers"]}
    assert slack["state"] == "resolved" and slack["task"] is None
    got = json_of(cli_in(store, "promises", "get", "slow.0", "--json"))
    assert set(got["task"]) == TASK_KEYS and got["task"]["state"] == "claimed"
    owners = {w["pid"]: w["owner"] for w in data["workers"]}
    assert got["task"]["owner"] == owners[email["worker_pid"]]

    text = cli_in(store, "status").stdout
    assert text.startswith(f"supervisor {supervisor.pid} on {store}") and "slow.0  send_email" in text
    # Done here: cancel the run rather than wait out the slow branches.
    assert cli_in(store, "promises", "cancel", "slow").returncode == 0
    code, out, _ = finish(invoke)
    assert code == 1 and json.loads(out)["type"] == "Canceled"


# -- settling from outside ---------------------------------------------------------------------------


def test_resolve_resumes_a_waiting_invoke(tmp_path: Path, processes: Spawn) -> None:
    store = tmp_path / "store"
    invoke = background(processes, store, "invoke", "approval_flow", "--id", "refund-7", "--json",
                        "--arg", json.dumps({"amount": 120}))
    approval = wait_pending(store, "refund-7.0", invoke)
    assert approval["func"] == "<external>" and approval["state"] == "pending"
    assert approval["tags"] == {"kind": "approval"} and approval["task"] is None  # no function runs it
    assert invoke.poll() is None  # still waiting for a person

    settled = json_of(cli_in(store, "promises", "resolve", "refund-7.0", "--value", '"yes"', "--json"))
    assert settled["state"] == "resolved" and settled["value"] == "yes"
    code, out, err = finish(invoke)
    assert code == 0, err
    assert json.loads(out) == {"request": {"amount": 120}, "decision": "yes", "approved": True}

    again = cli_in(store, "promises", "resolve", "refund-7.0", "--value", '"no"')
    one_line_error(again, 2, "refund-7.0", "already resolved")
    assert json_of(cli_in(store, "promises", "get", "refund-7.0", "--json"))["value"] == "yes"


def test_reject_and_cancel_reach_the_waiting_workflow(tmp_path: Path, processes: Spawn) -> None:
    store = tmp_path / "store"
    runs = {rid: background(processes, store, "invoke", "approval_flow", "--id", rid, "--json")
            for rid in ("rej", "child", "run")}
    for rid, proc in runs.items():
        wait_pending(store, f"{rid}.0", proc)

    rejected = json_of(cli_in(store, "promises", "reject", "rej.0", "--error", "too much", "--type",
                              "ValueError", "--json"))
    assert rejected["state"] == "rejected"
    assert rejected["error"] == {"type": "ValueError", "message": "too much"}
    # Cancelling the approval: the workflow awaiting it raises runner.errors.Canceled.
    child = json_of(cli_in(store, "promises", "cancel", "child.0", "--json"))
    assert child["state"] == "rejected_canceled" and child["canceled_descendants"] == []
    # Cancelling the run: the root and its pending approval, in one write.
    run = json_of(cli_in(store, "promises", "cancel", "run", "--reason", "order withdrawn", "--json"))
    assert run["state"] == "rejected_canceled" and run["canceled_descendants"] == ["run.0"]
    assert run["error"] == {"type": "Canceled", "message": "order withdrawn"}

    results = {rid: finish(proc) for rid, proc in runs.items()}
    assert all(code == 1 for code, _, _ in results.values()), results
    error = json.loads(results["rej"][1])  # the workflow let the rebuilt ValueError escape
    assert error["type"] == "ValueError" and error["message"] == "too much"
    assert error["args"] == ["too much"] and error["module"] == "builtins"
    canceled = {"type": "Canceled", "message": "canceled from the command line"}
    assert json.loads(results["child"][1]) == canceled
    assert json.loads(results["run"][1]) == {"type": "Canceled", "message": "order withdrawn"}
    assert json_of(cli_in(store, "promises", "get", "child", "--json"))["state"] == "rejected"
    approval = json_of(cli_in(store, "promises", "get", "run.0", "--json"))
    assert approval["state"] == "rejected_canceled" and approval["error"]["type"] == "Canceled"


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "code", "words"), [
    (("promises", "get", "no-such"), 2, ("no promise with id 'no-such'",)),
    (("tree", "no-such"), 2, ("no-such",)),
    (("promises", "resolve", "no-such", "--value", "1"), 2, ("no-such",)),
    (("promises", "reject", "order-1.0", "--error", "late"), 2, ("already resolved",)),
    (("promises", "cancel", "order-1"), 2, ("already resolved",)),
    (("promises", "resolve", "order-1.0", "--value", "{oops"), 2, ("--value is not valid JSON",)),
    (("promises", "list", "--state", "bogus"), 2, ("--state", "runner promises list --help")),
    (("promises", "reject", "order-1.0"), 2, ("--error",)),
])
def test_errors_are_one_line(done_store: Path, args: tuple[str, ...], code: int,
                             words: tuple[str, ...]) -> None:
    one_line_error(cli_in(done_store, *args), code, *words)


def test_inspecting_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    one_line_error(cli_in(tmp_path / "absent", "status"), 3, "no store at")
    assert not (tmp_path / "absent").exists()


# -- live progress, help, logging ----------------------------------------------------------------------


def test_invoke_shows_live_progress_on_a_terminal(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # Events well apart, so no frame is lost to the throttle: slack, sms, push fails and
    # retries, push resolves, email resolves, the root.
    event = {"order_id": "live", "delays": {"email": 1.5, "sms": 0.2, "slack": 0.1, "push": 0.5}}
    env = cli_env(None, {**ENV, "NOTIFY_OUTBOX": str(tmp_path / "outbox"), "TERM": "xterm-256color",
                         "COLUMNS": None, "LINES": None, "NO_COLOR": None})
    argv = runner_cmd("invoke", "notify_all", "--id", "live", "--arg", json.dumps(event), "--arg", "true",
                      "--store", str(store))
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(REPO_ROOT), encoding="utf-8", timeout=30,
                          dimensions=(30, 120))
    try:
        child.expect(r"send_email\S* \.0  \S*pending")  # a branch in flight, drawn before it settles
        child.expect(r"send_push\S* \.3  \S*pending.*attempt 2")  # the retry of push, seen live
        child.expect(r"send_push\S* \.3  \S*resolved")
        child.expect("notify_all live resolved after")  # then the result, printed plainly
        child.expect('"channels_notified": 4')
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_invoke_stays_plain_when_piped(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = cli_in(store, "invoke", "notify_all", "--id", "piped", "--arg",
                  json.dumps({"order_id": "p", "delays": FAST}))
    assert done.returncode == 0 and "\x1b" not in done.stdout
    assert json.loads(done.stdout)["channels_notified"] == 4  # the result alone, no status line


@pytest.mark.parametrize("command", [
    ["promises"], ["promises", "list"], ["promises", "get"], ["promises", "resolve"], ["promises", "reject"],
    ["promises", "cancel"], ["tree"], ["status"], ["invoke"], ["start"],
])
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="runner")
    assert result.exit_code == 0 and "Example" in result.output and "runner " in result.output


def test_json_log_lines_carry_time_level_pid_and_promise(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = cli_in(store, "invoke", "notify_all", "--id", "logged", "--json", "--log-level", "debug",
                  "--log-format", "json", "--arg", json.dumps({"order_id": "l", "delays": FAST}),
                  "--arg", "true")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines and all({"time", "level", "pid", "promise", "message"} <= set(line) for line in lines)
    retry = [line for line in lines if "retry in" in line["message"]]
    assert retry and retry[0]["promise"] == "logged.3" and retry[0]["level"] == "info"
    assert {line["pid"] for line in lines} >= {retry[0]["pid"]}
