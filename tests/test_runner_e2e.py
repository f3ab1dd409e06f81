"""The runner end to end, as a user meets it: `runner invoke` and `runner start` in real processes.

Fan-out timing, retries, idempotent invokes, deep and wide runs on two workers, and bad
input. Crashes (SIGKILL of workers and supervisors) are in test_runner_kill_e2e.py.
"""

from __future__ import annotations

import json
import time

import pytest

from runner.store import State
from tests.e2e_support import CHANNELS, Workspace, event, result_of, timed
from tests.helpers import wait_until

FACTORIAL_30 = 265252859812191058636308480000000


# -- fan-out ------------------------------------------------------------------------------


def test_notify_wall_time_tracks_the_slowest_channel(any_ws: Workspace) -> None:
    """Wall time stays under 1.3x the slowest channel (serial would be 1.3 s against 1.0 s)."""
    any_ws.start(workers=2)  # already running: process start-up is not part of what we measure
    trivial, cli_trivial = timed(any_ws.invoke, "notify_all", event("warm", email=0, sms=0, slack=0, push=0))
    result_of(trivial)

    timed_event = event("timed", email=0.1, sms=0.1, slack=0.1, push=1.0)
    done, cli_wall = timed(any_ws.invoke, "notify_all", timed_event, promise_id="timed")
    result = result_of(done)
    root = any_ws.get("timed")
    assert root.settled_at is not None
    wall = root.settled_at - root.created_at  # from the store: creation to settlement of the root
    slowest, total = result["slowest_ms"] / 1000, result["sum_ms"] / 1000
    print(f"\nnotify: wall {wall * 1000:.0f} ms (cli {(cli_wall - cli_trivial) * 1000:.0f} ms beyond a "
          f"trivial invoke), slowest {slowest * 1000:.0f} ms, sum {total * 1000:.0f} ms, "
          f"ratio {wall / slowest:.3f}")
    assert result["channels_notified"] == 4
    assert total >= 1.25, "the channels did not take their delays"
    assert wall < 1.3 * slowest, f"wall {wall:.3f} s is not near the slowest channel {slowest:.3f} s"
    assert any_ws.deliveries() == {channel: 2 for channel in CHANNELS}  # the warm-up and the timed run


def test_simulated_push_failure_retries_push_alone(any_ws: Workspace) -> None:
    result = result_of(any_ws.invoke("notify_all", event("o-crash"), True, promise_id="crash"))

    assert result["channels_notified"] == 4
    assert [r["channel"] for r in result["results"]] == list(CHANNELS)
    assert any_ws.deliveries() == {"email": 1, "sms": 1, "slack": 1, "push": 2}
    pushes = [line for line in any_ws.sends() if line["channel"] == "push"]
    assert [line["attempt"] for line in pushes] == [1, 2]
    # The idempotency key a provider would see is the promise id, the same on every attempt.
    keys = {r["channel"]: r["idempotency_key"] for r in result["results"]}
    assert keys == {channel: f"crash.{i}" for i, channel in enumerate(CHANNELS)}
    assert all(line["promise_id"] == keys[line["channel"]] for line in any_ws.sends())


def test_invoking_one_id_twice_runs_it_once(any_ws: Workspace) -> None:
    """A second invoke attaches to the run in flight; a third returns the stored result at once."""
    args = ["invoke", "notify_all", "--json", "--id", "order-7", "--arg", json.dumps(event("o-7", push=1.0))]
    first = any_ws.background(*args, name="first")  # runs the embedded supervisor
    wait_until(lambda: any_ws.exists() and any_ws.store.get("order-7") is not None, timeout=20,
               message=lambda: f"root never created: {any_ws.stderr('first')}")
    second = result_of(any_ws.cli(*args))
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0, any_ws.stderr("first")
    third = result_of(any_ws.cli(*args))

    assert json.loads(out) == second == third
    assert any_ws.deliveries() == {channel: 1 for channel in CHANNELS}  # the third ran nothing again


def test_an_existing_id_running_another_function_is_refused(any_ws: Workspace) -> None:
    result_of(any_ws.invoke("factorial", 3, promise_id="taken"))
    done = any_ws.invoke("fanout", ["email"], "hi", promise_id="taken")
    assert done.returncode == 2
    assert done.stderr.strip() == "runner: error: promise 'taken' exists and runs 'factorial', not 'fanout'"
    assert any_ws.get("taken").value == 6


# -- depth and width on two workers: a waiting workflow holds no worker -------------------


def test_factorial_30_nests_30_workflows_on_two_single_slot_workers(any_ws: Workspace) -> None:
    """Two slots in all, 30 workflows waiting on each other: only if waiting holds no slot."""
    done = any_ws.invoke("factorial", 30, promise_id="fact", extra=("--workers", "2", "--concurrency", "1"))

    assert result_of(done) == FACTORIAL_30
    deepest = any_ws.get("fact" + ".0" * 29)
    assert (deepest.func, deepest.args, deepest.value) == ("factorial", [1], 1)
    assert any_ws.store.children(deepest.id) == []


def test_fan_out_of_1000_on_two_workers(any_ws: Workspace) -> None:
    # Default concurrency: only the root waits here, so one slot per worker would prove no
    # more, and it would make every child pay its own claim on a disk other tests share.
    items = [{"id": i, "data": f"item-{i}"} for i in range(1000)]
    done, wall = timed(any_ws.invoke, "fan_out_fan_in", items, promise_id="wide", extra=("--workers", "2"),
                       timeout=120)

    result = result_of(done)
    root = any_ws.get("wide")
    assert root.settled_at is not None
    print(f"\nfan-out of 1000: {1000 / (root.settled_at - root.created_at):.0f} children/s "
          f"({wall:.2f} s for the whole invoke)")
    assert result == [{"id": i, "output": f"Processed: item-{i} (item #{i})"} for i in range(1000)]
    children = any_ws.store.children("wide")
    assert [c.id for c in children] == [f"wide.{i}" for i in range(1000)]
    assert all(c.state == "resolved" for c in children)


def test_fanout_dispatches_by_registered_name(any_ws: Workspace) -> None:
    channels = ["email", "sms", "slack", "push", "webhook"]
    result = result_of(any_ws.invoke("fanout", channels, "ship it", promise_id="rpc"))

    assert result == {"delivered": [{"channel": c, "ok": True} for c in channels]}
    assert [(c.func, c.args[0]["channel"]) for c in any_ws.store.children("rpc")] == [
        ("send", c) for c in channels]


# -- retries ---------------------------------------------------------------------------------


def test_a_failing_leaf_retries_by_its_policy_and_its_siblings_run_once(any_ws: Workspace) -> None:
    traces = any_ws.root / "traces"
    traces.mkdir()
    result = result_of(any_ws.invoke("retry_family", str(traces), promise_id="fam"))

    def attempts(name: str) -> list[int]:
        lines = (traces / f"{name}.jsonl").read_text().splitlines()
        return [json.loads(line)["attempt"] for line in lines]

    assert result == {"flaky": {"attempt": 3}, "steady": "steady",
                      "forbidden": "PermissionError: the provider said no"}
    assert attempts("flaky") == [1, 2, 3]  # failed twice, then succeeded
    assert attempts("steady") == [1]  # its sibling ran once
    assert attempts("forbidden") == [1]  # a non-retryable error is not retried
    error = any_ws.get("fam.2").value
    assert error["type"] == "PermissionError" and error["message"] == "the provider said no"


# -- bad input: one line on stderr, the documented exit code, nothing written elsewhere ----


BAD_INPUT = {
    "unknown function": (["invoke", "no_such_function"], 2, "unknown function 'no_such_function'"),
    "non-JSON --arg": (["invoke", "factorial", "--arg", "{oops"], 2, "--arg #1 is not valid JSON"),
    "id of a child's form": (["invoke", "factorial", "--arg", "3", "--id", "order.3"], 2,
                             "the form reserved for child promises"),
    "2000-byte id": (["invoke", "factorial", "--arg", "3", "--id", "x" * 2000], 2, "at most 1024 bytes"),
    "empty id": (["invoke", "factorial", "--arg", "3", "--id", ""], 2, "non-empty string"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(ws: Workspace, case: str) -> None:
    argv, code, message = BAD_INPUT[case]
    done = ws.cli(*argv)

    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("runner: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert ws.files_outside_store() == []
    if ws.store_dir.exists():
        assert ws.store.search().items == []


@pytest.mark.parametrize("kind", ["a regular file", "a directory of something else"])
def test_a_store_path_that_is_not_a_store_is_exit_3(ws: Workspace, kind: str) -> None:
    if kind == "a regular file":
        ws.store_dir.write_text("mine\n")
    else:
        ws.store_dir.mkdir()
        (ws.store_dir / "notes.txt").write_text("mine\n")
    done = ws.cli("invoke", "factorial", "--arg", "3")

    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("runner: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_damaged_record_is_exit_3_for_every_command_and_left_as_it_was(ws: Workspace) -> None:
    assert result_of(ws.invoke("factorial", 3, promise_id="f")) == 6
    ws.store.close()
    segment = ws.store_dir / "log" / "00000001.seg"
    data = bytearray(segment.read_bytes())
    data[20] ^= 0xFF  # inside the first frame, with whole frames after it: damage, not a torn tail
    segment.write_bytes(bytes(data))
    for args in (("invoke", "factorial", "--arg", "3"), ("promises", "list"), ("tree", "f"), ("status",)):
        done = ws.cli(*args)
        assert done.returncode == 3, (args, done.stderr)
        assert "corrupt record" in done.stderr and str(segment) in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert segment.read_bytes() == bytes(data)  # reported, never repaired into "absent"


def test_a_run_past_its_timeout_is_rejected_with_its_pending_children(any_ws: Workspace) -> None:
    started = time.monotonic()
    proc = any_ws.background("invoke", "notify_all", "--json", "--id", "late", "--timeout", "500ms",
                         "--arg", json.dumps(event("late", push=6.0)))
    assert proc.stdout is not None
    printed = json.loads(proc.stdout.readline())
    printed_after = time.monotonic() - started
    assert proc.wait(30) == 1

    assert printed["type"] == "TimeoutError"
    # The result is shown as soon as the root settles, not after push's thread ends and
    # the embedded supervisor has drained (bounds generous for a loaded machine, well short of 6 s).
    assert printed_after < 4.5, printed_after
    root, push, slack = any_ws.get("late"), any_ws.get("late.3"), any_ws.get("late.2")
    assert root.state is State.REJECTED_TIMEDOUT and push.state is State.REJECTED_TIMEDOUT
    assert slack.state is State.RESOLVED  # what finished in time stays settled
    assert root.settled_at is not None and root.settled_at - root.created_at < 1.0  # at its deadline


def test_hostile_ids_are_stored_inside_the_store(ws: Workspace) -> None:
    hostile = ["../x", "../../etc/passwd", "/tmp/absolute", "a/b\\c", "line\nbreak", "ünï cødé ✓"]
    for promise_id in hostile:
        assert result_of(ws.invoke("factorial", 3, promise_id=promise_id)) == 6
    assert ws.files_outside_store() == []
    assert not (ws.root.parent / "x").exists()
    for promise_id in hostile:
        assert ws.get(promise_id).value == 6
        assert ws.get(f"{promise_id}.0").parent == promise_id


@pytest.mark.parametrize("func", ["unstorable", "spawn_unstorable"])
def test_a_value_that_cannot_be_stored_rejects_the_run(any_ws: Workspace, func: str) -> None:
    """A leaf returning a set, or a workflow passing one to a child: rejected, with the reason."""
    done = any_ws.invoke(func, promise_id="odd")

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    error = json.loads(done.stdout)
    assert error["type"] == "NotSerializable"
    assert "cannot store a value of type set" in error["message"]
    assert any_ws.get("odd").state == "rejected"
