"""Judge a chaos round from its evidence: the store's execution history and the effects journal.

The store says what the round's promises went through: which settled before the kill,
which were held or started at it, the claims the harness saw (who ran what, when, under
which fencing counter), the attempt that settled each. The effects journal (runner.effects:
one line per recorded effect, with pid and time, written by the function itself outside
the store) is what the outside world saw, so the rules hold on it wherever a function
records its effects (DESIGN.md, invariants 1 and 2), per leaf promise of the run:

- an effect later than its promise's settlement is a settled promise executed again;
- two records of one effect are allowed only when the process of the earlier one died
  before settling (or a retry of the function's own policy ran it);
- a promise in flight at the kill must run again after it (an effect, a claim seen, or
  a settlement after the kill, which only a new claim can write);
- every leaf settles, the run resolves, and the workflow's result is right.

A scenario says which workflow a round runs and with what; the notify example's one
knows its four channels and its result, any other function is judged by the rules alone.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from runner.store import Promise, State

from ..owners import owner_pid

SLACK = 0.005  # seconds: how late the harness may see a claim begin


@dataclass(frozen=True)
class Scenario:
    """Any registered function, run with the given arguments and judged by the rules alone."""

    workflow: str
    args: tuple[Any, ...] = ()

    def run_args(self, root_id: str, plan: Any) -> list[Any]:
        return list(self.args)

    def branch_names(self) -> tuple[str, ...] | None:
        """The names of the root's children by position, when the scenario knows them."""
        return None

    def branch_problems(self, promise: Promise, effects: list[dict[str, Any]]) -> list[str]:
        """Beyond the rules on executions: a leaf of any workflow must settle."""
        return ["never settled"] if not promise.settled else []

    def check_result(self, root: Promise, args: list[Any]) -> list[str]:
        if root.state is not State.RESOLVED:
            return [f"the workflow ended {root.state.value}: {root.value!r}"]
        return []

    def result_line(self, root: Promise, branches: int) -> str:
        value = json.dumps(root.value, default=str)
        return f"{root.func} {root.state.value} with {value[:80] + ('...' if len(value) > 80 else '')}"


@dataclass(frozen=True)
class NotifyScenario(Scenario):
    """The notify example: four channels whose delays straddle the kill, one send each."""

    branches: tuple[str, ...] = ()

    def run_args(self, root_id: str, plan: Any) -> list[Any]:
        return [{"order_id": root_id, "delays": plan.delays}]

    def branch_names(self) -> tuple[str, ...] | None:
        return self.branches

    def branch_problems(self, promise: Promise, effects: list[dict[str, Any]]) -> list[str]:
        problems = []
        if promise.state is not State.RESOLVED:
            problems.append(f"ended {promise.state.value}: {promise.value!r}")
        return problems + ([] if effects else ["never delivered: no send in the effects journal"])

    def check_result(self, root: Promise, args: list[Any]) -> list[str]:
        problems = super().check_result(root, args)
        if problems:
            return problems
        event = args[0]
        value = root.value if isinstance(root.value, dict) else {}
        if value.get("order_id") != event["order_id"]:
            problems.append(f"result order_id {value.get('order_id')!r}, expected {event['order_id']!r}")
        if value.get("channels_notified") != len(self.branches):
            problems.append(f"result says {value.get('channels_notified')!r} channels notified, "
                            f"expected {len(self.branches)}")
        results = value.get("results") or []
        for position, name in enumerate(self.branches):
            got = results[position] if position < len(results) else {}
            expected_key = f"{root.id}.{position}"
            if got.get("channel") != name or got.get("idempotency_key") != expected_key:
                problems.append(f"result #{position} is {got!r}, expected channel {name!r} "
                                f"with idempotency key {expected_key!r}")
        return problems

    def result_line(self, root: Promise, branches: int) -> str:
        return f"{branches} channels notified, each with its own idempotency key"


NOTIFY = NotifyScenario("notify_all", branches=("email", "sms", "slack", "push"))


@dataclass
class Seen:
    """A claim the harness saw: one promise held by one worker under one fencing counter."""

    id: str
    counter: int
    pid: int
    first: float
    last: float


@dataclass
class Snapshot:
    """The run's claims at the kill instant (owner by promise id) and which branches had started."""

    owners: dict[str, str]
    started: set[str]


@dataclass
class Kill:
    at: float  # epoch seconds, taken just before the first SIGKILL
    pids: list[int]
    how: str
    group: bool  # the whole supervisor group died, so a new `runner start` was launched
    victim: int | None = None  # the process a store failpoint killed first
    victim_at: float | None = None


@dataclass
class Evidence:
    number: int
    plan: Any  # chaos_plan.Plan
    root: Promise
    children: list[Promise]  # the leaves judged: the root's descendants that are not workflows
    args: list[Any]
    t0: float
    kill: Kill | None
    snapshot: Snapshot | None
    seen: list[Seen]
    deaths: dict[int, float]
    records: list[dict[str, Any]]  # the run's lines of the effects journal
    restarts: list[tuple[float, float]]  # (launched, workers up) of each new `runner start`
    store: str
    workdir: str
    problems: list[str]
    notes: list[str]
    scenario: Scenario


@dataclass
class Attempt:
    """One execution of a promise by one worker; times in seconds from the root's creation."""

    pid: int
    start: float
    end: float
    outcome: str  # settled | killed | released | running | unobserved | after-settled
    counter: int | None = None
    effects: list[float] = field(default_factory=list)  # when each of its recorded effects was written


@dataclass
class Lane:
    id: str
    label: str
    created: float | None
    settled: float | None
    attempts: list[Attempt]


@dataclass
class Branch:
    id: str
    name: str
    label: str  # the name and the id below the root: "email .0", "pack .2.1"
    at_kill: str  # settled | in flight | not started
    executions: int
    allowed: tuple[int, int]
    problems: list[str]
    ran_again_after: float | None = None  # seconds from the kill to the re-run's start
    settled_after_kill: float | None = None
    ran_again_pid: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def allowed_text(self) -> str:
        low, high = self.allowed
        return str(low) if low == high else f"{low}-{high}"

    @property
    def verdict(self) -> str:
        if self.problems:
            return "VIOLATION: " + "; ".join(self.problems)
        return "ok, ran again" if self.at_kill == "in flight" else "ok"


@dataclass
class Report:
    number: int
    plan: Any
    root: str
    workflow: str
    store: str
    workdir: str
    kill: Kill | None
    kill_at: float | None  # seconds from the root's creation
    branches: list[Branch]
    lanes: list[Lane]
    wall: float | None
    slowest: tuple[str, float] | None
    downtime: float | None
    restart_up: float | None  # seconds from the kill until a new supervisor's workers were up
    tail: float | None  # seconds from the last branch settling until the workflow settled
    result_problems: list[str]
    result_line: str  # what the result says when it is right
    problems: list[str]
    notes: list[str]

    @property
    def violations(self) -> list[str]:
        found = [f"{b.name} ({b.id}): {p}" for b in self.branches for p in b.problems]
        return found + [f"result: {p}" for p in self.result_problems] + self.problems

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        kill = None
        if self.kill is not None:
            kill = {"at": self.kill_at, "how": self.kill.how, "pids": self.kill.pids,
                    "group": self.kill.group, "victim": self.kill.victim}
        return {
            "round": self.number, "ok": self.ok, "workflow": self.workflow, "root": self.root,
            "store": self.store, "plan": self.plan.to_json(), "kill": kill,
            "branches": [{"branch": b.name, "id": b.id, "at_kill": b.at_kill, "executions": b.executions,
                          "allowed": b.allowed_text, "verdict": b.verdict, "problems": b.problems,
                          "ran_again_after": b.ran_again_after, "settled_after_kill": b.settled_after_kill}
                         for b in self.branches],
            "wall": self.wall, "slowest": None if self.slowest is None else
            {"branch": self.slowest[0], "seconds": self.slowest[1]},
            "downtime": self.downtime, "restart_up": self.restart_up, "tail": self.tail,
            "result_problems": self.result_problems, "result": self.result_line,
            "problems": self.problems, "notes": self.notes,
            "violations": self.violations,
            "timeline": [{"id": lane.id, "label": lane.label, "created": lane.created,
                          "settled": lane.settled, "attempts": [asdict(a) for a in lane.attempts]}
                         for lane in self.lanes],
        }


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def _judged(ev: Evidence) -> list[tuple[str, str, Promise | None]]:
    """(id, name, promise) of every leaf judged: the scenario's named children, else the run's leaves."""
    by_id = {c.id: c for c in ev.children}
    names = ev.scenario.branch_names()
    if names is not None:
        return [(f"{ev.root.id}.{i}", name, by_id.get(f"{ev.root.id}.{i}")) for i, name in enumerate(names)]
    return [(c.id, c.func, c) for c in ev.children]


def _label(root: str, promise_id: str, name: str) -> str:
    below = promise_id[len(root) + 1:] if promise_id.startswith(root + ".") else ""
    return f"{name} .{below}" if below else name


def judge(ev: Evidence) -> Report:
    by_id = {c.id: c for c in ev.children}
    kill_at = None if ev.kill is None else ev.kill.at
    branches, lanes = [], []
    for branch_id, name, promise in _judged(ev):
        records = sorted((r for r in ev.records if r.get("promise_id") == branch_id), key=lambda r: r["time"])
        label = _label(ev.root.id, branch_id, name)
        branch = _judge_branch(ev, branch_id, name, label, promise, records)
        lane = Lane(branch_id, label, _rel(promise.created_at, ev.t0) if promise else None,
                    _rel(promise.settled_at, ev.t0) if promise else None,
                    _attempts(ev, branch_id, promise, records, ev.plan.delays.get(name, 0.0)))
        ran_again = [a for a in lane.attempts if kill_at is not None and a.start + ev.t0 > kill_at - SLACK
                     and a.outcome != "after-settled"]
        if branch.at_kill == "in flight" and ran_again and kill_at is not None:
            first = min(ran_again, key=lambda a: a.start)
            branch.ran_again_after = round(max(0.0, first.start + ev.t0 - kill_at), 3)
            branch.ran_again_pid = first.pid
            if promise is not None and promise.settled_at is not None:
                branch.settled_after_kill = round(promise.settled_at - kill_at, 3)
        branches.append(branch)
        lanes.append(lane)
    if ev.root.id not in by_id:  # a workflow root: its steps get a lane of their own, on top
        lanes.insert(0, _root_lane(ev))
    ends = [(b.name, c.settled_at - c.created_at) for b in branches
            if (c := by_id.get(b.id)) is not None and c.settled_at is not None]
    after = [a.start + ev.t0 for lane in lanes for a in lane.attempts
             if kill_at is not None and a.start + ev.t0 > kill_at and a.outcome != "after-settled"]
    restart_up = None
    if ev.restarts and kill_at is not None and ev.restarts[0][1]:
        restart_up = round(ev.restarts[0][1] - kill_at, 3)
    return Report(
        number=ev.number, plan=ev.plan, root=ev.root.id, workflow=ev.root.func, store=ev.store,
        workdir=ev.workdir, kill=ev.kill, kill_at=_rel(kill_at, ev.t0), branches=branches, lanes=lanes,
        wall=_rel(ev.root.settled_at, ev.t0),
        slowest=max(((n, round(s, 3)) for n, s in ends), key=lambda x: x[1], default=None),
        downtime=round(min(after) - kill_at, 3) if after and kill_at is not None else None,
        restart_up=restart_up, tail=_tail(ev.root, by_id),
        result_problems=ev.scenario.check_result(ev.root, ev.args),
        result_line=ev.scenario.result_line(ev.root, len(branches)),
        problems=list(ev.problems), notes=list(ev.notes))


def _tail(root: Promise, children: dict[str, Promise]) -> float | None:
    ends = [c.settled_at for c in children.values() if c.settled_at is not None and c.id != root.id]
    if root.settled_at is None or not ends:
        return None
    return round(root.settled_at - max(ends), 3)


def _state_at_kill(ev: Evidence, branch_id: str, promise: Promise | None,
                   records: list[dict[str, Any]]) -> str:
    if ev.kill is None or ev.snapshot is None:
        return "not killed"
    if promise is not None and promise.settled_at is not None and promise.settled_at <= ev.kill.at:
        return "settled"
    held = branch_id in ev.snapshot.owners or branch_id in ev.snapshot.started
    if held or any(r["time"] < ev.kill.at for r in records):
        return "in flight"
    return "not started"


def _ran_again(ev: Evidence, branch_id: str, promise: Promise | None, records: list[dict[str, Any]]) -> bool:
    """Whether a promise in flight at the kill ran after it.

    A function that records its effects must have recorded one after the kill: that is
    the outside proof. For one that records nothing, the store's word: a claim seen to
    begin after the kill, or a settlement after it, which the store accepts only from a
    claim taken after the killed holder's.
    """
    assert ev.kill is not None
    if records:
        return any(r["time"] > ev.kill.at for r in records)
    if any(s.id == branch_id and s.first > ev.kill.at for s in ev.seen):
        return True
    return promise is not None and promise.settled_at is not None and promise.settled_at > ev.kill.at


def _executions(ev: Evidence, branch_id: str, promise: Promise | None, records: list[dict[str, Any]]) -> int:
    """How many times the function ran, by the most telling evidence: claims or recorded effects.

    The highest fencing counter seen is how many claims the promise had; the effect
    recorded most often is how many runs got that far.
    """
    claims = max((s.counter for s in ev.seen if s.id == branch_id), default=0)
    per_effect = Counter(str(r.get("effect")) for r in records)
    ran = 1 if promise is not None and promise.attempt > 0 else 0
    return max(claims, max(per_effect.values(), default=0), ran)


def _repeated(ev: Evidence, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first record of an effect recorded again, though its process lived on and no retry came.

    Records no later than the settlement, per effect name: each but the last of its name
    needs its writer to have died after writing it, or a later attempt (the function's
    own retry policy) to have recorded it again.
    """
    for i, record in enumerate(records[:-1]):
        later = [r for r in records[i + 1:] if r.get("effect") == record.get("effect")]
        if not later:
            continue
        died = ev.deaths.get(record["pid"], 0.0) >= record["time"]
        retried = any(r.get("attempt", 0) > record.get("attempt", 0) for r in later)
        if not died and not retried:
            return record
    return None


def _judge_branch(ev: Evidence, branch_id: str, name: str, label: str, promise: Promise | None,
                  records: list[dict[str, Any]]) -> Branch:
    at_kill = _state_at_kill(ev, branch_id, promise, records)
    kills = 0 if ev.kill is None else 1 + (ev.kill.victim is not None)
    # Its attempts count the retries of its own policy, and a death the supervisor saw
    # (a killed worker's claim is retried as a new attempt; a whole group's is not).
    attempts = max(1, promise.attempt) if promise is not None else 1
    allowed = (1, max(attempts, 1 + kills)) if at_kill == "in flight" else (1, attempts)
    problems = ["never created"] if promise is None else ev.scenario.branch_problems(promise, records)
    if promise is not None and promise.settled_at is not None:
        late = [r for r in records if r["time"] > promise.settled_at]
        if late:
            problems.append(f"executed after it settled (pid {late[0]['pid']}, "
                            f"{late[0]['time'] - promise.settled_at:.3f} s after)")
        twice = _repeated(ev, [r for r in records if r["time"] <= promise.settled_at])
        if twice is not None:
            problems.append(f"executed twice though pid {twice['pid']} never died mid-run")
    if at_kill == "in flight" and not _ran_again(ev, branch_id, promise, records):
        problems.append("in flight at the kill, yet never ran again")
    executions = _executions(ev, branch_id, promise, records)
    if executions > allowed[1]:
        problems.append(f"executed {executions} times, at most {allowed[1]} allowed")
    return Branch(branch_id, name, label, at_kill, executions, allowed, problems)


def _attempts(ev: Evidence, promise_id: str, promise: Promise | None, records: list[dict[str, Any]],
              delay: float) -> list[Attempt]:
    """Attempts from the claims seen, each recorded effect placed in its attempt (or one of its own)."""
    seen = sorted((s for s in ev.seen if s.id == promise_id), key=lambda s: s.counter)
    settled = None if promise is None else promise.settled_at
    attempts = []
    for i, s in enumerate(seen):
        died = ev.deaths.get(s.pid)
        if died is not None and died >= s.first and (settled is None or settled > died):
            end, outcome = died, "killed"
        elif settled is not None and i == len(seen) - 1:
            end, outcome = settled, "settled"
        elif i + 1 < len(seen):
            end, outcome = seen[i + 1].first, "released"
        else:
            end, outcome = s.last, "running"
        attempts.append(Attempt(s.pid, round(s.first - ev.t0, 3), round(end - ev.t0, 3), outcome, s.counter))
    for r in records:
        t = r["time"] - ev.t0
        home = next((a for a in attempts
                     if a.pid == r["pid"] and a.start - SLACK <= t <= a.end + SLACK), None)
        if home is None:
            outcome = "after-settled" if settled is not None and r["time"] > settled else "unobserved"
            home = Attempt(r["pid"], round(max(0.0, t - delay), 3), round(t, 3), outcome)
            attempts.append(home)
        home.effects.append(round(t, 3))
    return sorted(attempts, key=lambda a: a.start)


def _root_lane(ev: Evidence) -> Lane:
    seen = sorted((s for s in ev.seen if s.id == ev.root.id), key=lambda s: s.counter)
    held = None if ev.snapshot is None else ev.snapshot.owners.get(ev.root.id)
    # The step held at the kill is the last one its holder began before the kill.
    before = [s for s in seen if ev.kill is not None and held is not None
              and owner_pid(held) == s.pid and s.first <= ev.kill.at]
    killed_step = before[-1] if before else None
    attempts = []
    for s in seen:
        killed = s is killed_step
        end = ev.kill.at if killed and ev.kill is not None else s.last
        attempts.append(Attempt(s.pid, round(s.first - ev.t0, 3), round(end - ev.t0, 3),
                                "killed" if killed else "step", s.counter))
    return Lane(ev.root.id, ev.root.func, 0.0, _rel(ev.root.settled_at, ev.t0), attempts)
