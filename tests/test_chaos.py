"""`runner chaos`: real supervisors, real SIGKILLs, and a harness that can fail.

The process tests drive the real CLI (each run starts `runner start` processes of its
own and reaps them); the unit tests feed the verdict hand-made evidence, so every rule
is seen to catch what it is meant to catch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.apps import load_apps
from runner.chaos.plan import Plan, fixed_plan, random_plan
from runner.chaos.run import run_rounds
from runner.chaos.verdict import NOTIFY, Evidence, Kill, Scenario, Snapshot, judge
from runner.cli.durations import parse_duration
from runner.registry import registry
from runner.store import Promise, State
from tests.helpers import REPO_ROOT, Spawn, run_cli, runner_cmd, wait_until


def chaos(*args: str, env: dict[str, str | None] | None = None, timeout: float = 120,
          cwd: Path = REPO_ROOT) -> Any:
    return run_cli("chaos", *args, env=env, timeout=timeout, cwd=cwd)


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["branch"]: b for b in report["branches"]}


# -- process tests ---------------------------------------------------------------------


def test_killing_the_workers_at_2s_reruns_only_the_branches_in_flight() -> None:
    result = chaos("--kill-after", "2s", "--target", "workers", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["violations"] == []
    assert report["kill"]["pids"] and not report["kill"]["group"]
    by = rows(report)
    # slack (0.2 s) and sms (0.5 s) settled before the kill: sent once, never again.
    for name in ("slack", "sms"):
        assert (by[name]["at_kill"], by[name]["executions"], by[name]["allowed"]) == ("settled", 1, "1")
    # email (2.5 s) and push (3 s) were in flight: they ran again after the kill.
    for name in ("email", "push"):
        assert by[name]["at_kill"] == "in flight" and by[name]["allowed"] == "1-2"
        assert by[name]["executions"] in (1, 2) and by[name]["ran_again_after"] is not None
    assert report["wall"] >= 2.0 + 3.0 and report["slowest"]["branch"] == "push"
    # The workflow resumes at once after its last branch, even though the worker that had
    # it in memory was killed (it once waited out the affinity grace for the dead worker).
    assert report["tail"] < 0.9, report["tail"]


def test_killing_the_supervisor_restarts_it_and_the_run_completes(tmp_path: Path) -> None:
    picture = tmp_path / "run.svg"
    result = chaos("--kill-after", "1s", "--target", "supervisor", "--timeline", str(picture))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "SIGKILL of the supervisor and all its workers" in out
    assert re.search(r"^slack \.2\s+settled\s+1\s+1\s+ok$", out, re.M), out
    assert re.search(r"^email \.0\s+in flight\s+[12]\s+1-2\s+ok, ran again$", out, re.M), out
    assert "new supervisor up after" in out and "downtime" in out
    assert "timeline: 0 to" in out and "\nPASS: " in out
    svg = ET.parse(picture).getroot()  # well-formed and self-contained
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t.startswith("SIGKILL at 1.0") for t in texts), texts
    assert {"email .0", "sms .1", "slack .2", "push .3"} <= set(texts)
    assert sum(t.startswith("pid ") for t in texts) >= 6  # every attempt is labelled with its pid


@pytest.mark.slow
def test_a_random_soak_of_21_rounds_passes() -> None:
    result = chaos("--rounds", "21", "--random", "--seed", "2024", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    line = r"^summary: (\d+) rounds, (\d+) kills \((.*)\), (\d+) violations"
    summary = re.search(line, result.stdout, re.M)
    assert summary is not None, result.stdout
    assert int(summary.group(1)) == 21 and int(summary.group(4)) == 0
    assert int(summary.group(2)) >= 18  # nearly every round kills something
    assert "store-write" in summary.group(3) and "supervisor" in summary.group(3)
    assert "seed 2024" in result.stdout


def test_a_failpoint_firing_in_the_supervisors_own_start_up_is_that_rounds_kill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's first store write (releasing the last generation's claims) crashes it
    before its workers are up: the round restarts it and passes, not the harness failing."""
    monkeypatch.chdir(REPO_ROOT)  # where `runner start` finds the example apps
    load_apps(["examples.notify"])
    delays = {"email": 0.3, "sms": 0.1, "slack": 0.05, "push": 0.4}
    plan = Plan("store-write", 2.0, delays, "locked.hold:1")
    reports, summary = run_rounds(iter([plan]), workdir=tmp_path, store=None, registry=registry,
                                  scenario=NOTIFY)
    assert reports[0].ok, reports[0].violations
    assert any("before the workers were up" in note for note in reports[0].notes), reports[0].notes
    assert summary.rounds == 1


def test_the_supervisors_it_starts_die_with_the_harness(processes: Spawn) -> None:
    """However the harness ends (here SIGKILL, so no clean-up runs), nothing it started runs on."""
    harness = processes(runner_cmd("chaos", "--kill-after", "3s"), cwd=REPO_ROOT)
    started = wait_until(lambda: psutil.Process(harness.pid).children(recursive=True) or None, timeout=30,
                         message="the harness started no supervisor")
    os.kill(harness.pid, signal.SIGKILL)

    def all_gone() -> bool:
        return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in started)

    wait_until(all_gone, timeout=10, message="a supervisor outlived its harness")


def test_a_runner_that_reruns_a_settled_branch_is_caught() -> None:
    result = chaos("--kill-after", "1s", "--json", env={"RUNNER_TEST_BREAK": "rerun-settled:send_slack"})
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    by = rows(report)
    assert any("executed after it settled" in p for p in by["slack"]["problems"])
    assert all(by[name]["problems"] == [] for name in ("email", "sms", "push"))
    assert report["violations"] and all(v.startswith("slack ") for v in report["violations"])
    assert report["kept"] and Path(report["kept"]).is_dir()  # the evidence is kept for a look
    shutil.rmtree(report["kept"])


def test_the_broken_runner_is_named_in_the_terminal_report() -> None:
    result = chaos("--kill-after", "500ms", env={"RUNNER_TEST_BREAK": "rerun-settled:send_sms"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^sms \.1 .*VIOLATION: executed after it settled", result.stdout, re.M), result.stdout
    assert "FAIL: " in result.stdout and "! = effect after it settled" in result.stdout
    kept = re.search(r"kept in (\S+)$", result.stdout, re.M)
    assert kept is not None
    shutil.rmtree(kept.group(1))


SHOP = ("--app", "tests.apps.shop", "checkout", "--arg", json.dumps({"id": "o-1", "seconds": {"pack": 3}}))


def test_an_app_that_is_not_ours_is_judged_from_its_history_and_its_effects(tmp_path: Path) -> None:
    """The fixture shop knows nothing of notify: a nested workflow, its own step names.

    Run from a directory of the user's own: without --store, every round has a store of
    its own, and none is made where the command ran."""
    result = chaos(*SHOP, "--kill-after", "1s", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
    report = json.loads(result.stdout)
    assert report["ok"] and report["workflow"] == "checkout"
    by = rows(report)
    assert set(by) == {"reserve", "charge", "pack", "email"}  # every leaf, the nested ones too
    for name in ("reserve", "charge"):  # 0.1 s and 0.2 s: settled before the kill, run once
        assert (by[name]["at_kill"], by[name]["executions"], by[name]["allowed"]) == ("settled", 1, "1")
    assert by["pack"]["at_kill"] == "in flight" and by["pack"]["ran_again_after"] is not None
    assert (by["email"]["at_kill"], by["email"]["executions"]) == ("not started", 1)
    assert report["result"].startswith("checkout resolved")


def test_an_app_that_is_not_ours_catches_the_runner_that_reruns_a_settled_step() -> None:
    result = chaos(*SHOP, "--kill-after", "1s", "--json", env={"RUNNER_TEST_BREAK": "rerun-settled:reserve"})
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    by = rows(report)
    assert any("executed after it settled" in p for p in by["reserve"]["problems"]), by["reserve"]
    assert all(by[name]["problems"] == [] for name in ("charge", "pack", "email"))
    assert report["violations"] and all(v.startswith("reserve ") for v in report["violations"])
    shutil.rmtree(report["kept"])


def test_bad_usage_exits_2() -> None:
    bad = chaos("--kill-after", "2 fortnights")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr
    assert chaos("--seed", "3").returncode == 2
    peer = chaos("--target", "one-of-two")  # a directory store has one supervisor
    assert peer.returncode == 2 and "needs a store several supervisors share" in peer.stderr
    assert len(peer.stderr.strip().splitlines()) == 1


# -- units -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("2s", 2.0), ("1.5s", 1.5), ("2", 2.0),
                                               (" 250 ms ", 0.25), ("1m", 60.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_fixed_delays_straddle_the_kill() -> None:
    plan = fixed_plan(2.0, "workers")
    assert plan.delays["slack"] < plan.delays["sms"] < 2.0 < plan.delays["email"] < plan.delays["push"]


def test_random_plans_replay_from_the_seed_and_take_turns() -> None:
    import random

    first = [random_plan(random.Random(5), i) for i in range(6)]
    again = [random_plan(random.Random(5), i) for i in range(6)]
    assert first == again
    assert [p.target for p in first[:3]] == ["workers", "supervisor", "store-write"]
    assert first[2].crash_at and ":" in first[2].crash_at
    shared = [random_plan(random.Random(5), i, shared=True) for i in range(3)]
    assert [(p.target, p.supervisors, p.crash_at) for p in shared] == [
        ("workers", 1, None), ("supervisor", 1, None), ("one-of-two", 2, None)]


T0 = 1000.0
KILL = T0 + 1.0


def promise(pid: str, settled_at: float | None, state: State = State.RESOLVED, value: Any = None) -> Promise:
    return Promise(pid, state if settled_at is not None else State.PENDING, "send", [], "r", {}, None, T0,
                   settled_at, value)


def evidence(records: list[dict[str, Any]], settled: dict[int, float], *,
             in_flight: tuple[int, ...] = ()) -> Evidence:
    event = {"order_id": "r"}
    results = [{"channel": ch, "idempotency_key": f"r.{i}"} for i, ch in enumerate(NOTIFY.branches)]
    root = Promise("r", State.RESOLVED, "notify_all", [event], None, {}, None, T0, T0 + 3,
                   {"order_id": "r", "channels_notified": 4, "results": results})
    children = [promise(f"r.{i}", settled.get(i)) for i in range(4)]
    plan = fixed_plan(1.0, "workers")
    return Evidence(number=1, plan=plan, root=root, children=children, args=[event], t0=T0,
                    kill=Kill(KILL, [11], "SIGKILL of worker 11", False),
                    snapshot=Snapshot({f"r.{i}": "11@1" for i in in_flight}, set()),
                    seen=[], deaths={11: KILL}, records=records, restarts=[],
                    store="s", workdir="w", problems=[], notes=[], scenario=NOTIFY)


def send(position: int, pid: int, at: float) -> dict[str, Any]:
    channel = NOTIFY.branches[position]
    return {"effect": channel, "promise_id": f"r.{position}", "pid": pid, "time": T0 + at, "channel": channel}


def clean_records() -> list[dict[str, Any]]:
    return [send(1, 11, 0.3), send(2, 11, 0.1), send(0, 12, 2.0), send(3, 12, 2.5)]


def clean_settled() -> dict[int, float]:
    return {1: T0 + 0.31, 2: T0 + 0.11, 0: T0 + 2.01, 3: T0 + 2.51}


def test_verdict_accepts_a_clean_recovery() -> None:
    report = judge(evidence(clean_records(), clean_settled(), in_flight=(0, 3)))
    assert report.ok, report.violations
    assert [b.at_kill for b in report.branches] == ["in flight", "settled", "settled", "in flight"]


def test_verdict_accepts_a_resend_whose_first_sender_was_killed() -> None:
    records = [*clean_records(), send(0, 11, 0.95)]  # sent, then killed before it could settle
    report = judge(evidence(records, clean_settled(), in_flight=(0, 3)))
    assert report.ok, report.violations
    assert report.branches[0].executions == 2


def test_verdict_catches_a_send_after_settling() -> None:
    records = [*clean_records(), send(2, 12, 1.5)]
    report = judge(evidence(records, clean_settled(), in_flight=(0, 3)))
    assert not report.ok
    assert [b.name for b in report.branches if not b.ok] == ["slack"]
    assert "executed after it settled" in report.branches[2].problems[0]


def test_verdict_catches_a_duplicate_without_a_crash() -> None:
    records = [*clean_records(), send(3, 12, 2.2)]  # pid 12 never died, yet sent push twice
    report = judge(evidence(records, clean_settled(), in_flight=(0, 3)))
    assert [b.name for b in report.branches if not b.ok] == ["push"]
    assert "never died" in report.branches[3].problems[0]


def test_verdict_catches_an_in_flight_branch_that_never_ran_again() -> None:
    records = [send(1, 11, 0.3), send(2, 11, 0.1), send(0, 11, 0.9), send(3, 12, 2.5)]
    settled = {**clean_settled(), 0: KILL + 0.5}  # settled after the kill with no send after it
    report = judge(evidence(records, settled, in_flight=(0, 3)))
    assert [b.name for b in report.branches if not b.ok] == ["email"]
    assert "never ran again" in " ".join(report.branches[0].problems)


def test_verdict_catches_an_undelivered_branch_and_a_wrong_result() -> None:
    records = [r for r in clean_records() if r["promise_id"] != "r.1"]
    ev = evidence(records, clean_settled(), in_flight=(0, 3))
    ev.root = Promise("r", State.RESOLVED, "notify_all", [], None, {}, None, T0, T0 + 3,
                      {"order_id": "r", "channels_notified": 3, "results": []})
    report = judge(ev)
    assert any("never delivered" in p for p in report.branches[1].problems)
    assert report.result_problems and not report.ok


def any_function_evidence(leaves: list[Promise], held: tuple[str, ...]) -> Evidence:
    """A checkout (not notify) killed at KILL, whose leaves record no effects at all."""
    root = Promise("r", State.RESOLVED, "checkout", [], None, {}, None, T0, T0 + 3, {"ok": True})
    ev = evidence([], {}, in_flight=())
    ev.root, ev.children, ev.scenario, ev.args = root, leaves, Scenario("checkout"), []
    ev.snapshot = Snapshot({pid: "11@1" for pid in held}, set())
    return ev


def leaf(pid: str, func: str, settled_at: float | None) -> Promise:
    state = State.RESOLVED if settled_at is not None else State.PENDING
    return Promise(pid, state, func, [], "r", {}, None, T0, settled_at, None, 1 if settled_at else 0)


def test_verdict_of_any_function_takes_the_stores_word_when_nothing_is_recorded() -> None:
    """Settled after the kill while held at it: only a new claim could have settled it."""
    leaves = [leaf("r.0", "reserve", T0 + 0.2), leaf("r.1.0", "pack", KILL + 1.0)]
    report = judge(any_function_evidence(leaves, held=("r.1.0",)))
    assert report.ok, report.violations
    labels = [(b.label, b.at_kill) for b in report.branches]
    assert labels == [("reserve .0", "settled"), ("pack .1.0", "in flight")]
    assert report.result_line.startswith("checkout resolved")


def test_verdict_of_any_function_catches_a_leaf_left_behind_by_the_kill() -> None:
    leaves = [leaf("r.0", "reserve", T0 + 0.2), leaf("r.1.0", "pack", None)]
    report = judge(any_function_evidence(leaves, held=("r.1.0",)))
    assert report.branches[1].problems == ["never settled", "in flight at the kill, yet never ran again"]
    assert report.branches[0].ok and not report.ok

