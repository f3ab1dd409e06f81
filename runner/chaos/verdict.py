"""Judge a chaos round from its evidence: the outbox first, the store second.

The outbox (one line per delivery attempt, with pid and time, written by the leaf
itself) is what a customer would have received, so the rules are stated on it
(DESIGN.md, invariants 1 and 2), per branch:

- a send later than the branch's settlement is a settled promise executed again;
- two sends are allowed only when the process of the earlier one died before settling;
- a branch in flight at the kill must send again after the kill;
- every branch is delivered and resolved, and the workflow's result is right.

The claims the harness saw in the store only serve the picture: who ran what, when.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from runner.store import Promise, State

from ..owners import owner_pid

SLACK = 0.005  # seconds: how late the harness may see a claim begin


@dataclass(frozen=True)
class Scenario:
    """A workflow the harness knows how to drive and check: its branches, by position."""

    workflow: str
    branches: tuple[str, ...]

    def check_result(self, root: Promise, event: dict[str, Any]) -> list[str]:
        if root.state is not State.RESOLVED:
            return [f"the workflow ended {root.state.value}: {root.value!r}"]
        value = root.value if isinstance(root.value, dict) else {}
        problems = []
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


NOTIFY = Scenario("notify_all", ("email", "sms", "slack", "push"))


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
    children: list[Promise]
    event: dict[str, Any]
    t0: float
    kill: Kill | None
    snapshot: Snapshot | None
    seen: list[Seen]
    deaths: dict[int, float]
    records: list[dict[str, Any]]
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
    sends: list[float] = field(default_factory=list)


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
            "result_problems": self.result_problems, "problems": self.problems, "notes": self.notes,
            "violations": self.violations,
            "timeline": [{"id": lane.id, "label": lane.label, "created": lane.created,
                          "settled": lane.settled, "attempts": [asdict(a) for a in lane.attempts]}
                         for lane in self.lanes],
        }


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def judge(ev: Evidence) -> Report:
    by_id = {c.id: c for c in ev.children}
    kill_at = None if ev.kill is None else ev.kill.at
    branches, lanes = [], [_root_lane(ev)]
    for position, name in enumerate(ev.scenario.branches):
        branch_id = f"{ev.root.id}.{position}"
        records = sorted((r for r in ev.records if r.get("promise_id") == branch_id), key=lambda r: r["time"])
        promise = by_id.get(branch_id)
        branch = _judge_branch(ev, branch_id, name, promise, records)
        lane = Lane(branch_id, f"{name} .{position}", _rel(promise.created_at, ev.t0) if promise else None,
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
        result_problems=ev.scenario.check_result(ev.root, ev.event),
        problems=list(ev.problems), notes=list(ev.notes))


def _tail(root: Promise, children: dict[str, Promise]) -> float | None:
    ends = [c.settled_at for c in children.values() if c.settled_at is not None]
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


def _judge_branch(ev: Evidence, branch_id: str, name: str, promise: Promise | None,
                  records: list[dict[str, Any]]) -> Branch:
    at_kill = _state_at_kill(ev, branch_id, promise, records)
    kills = 0 if ev.kill is None else 1 + (ev.kill.victim is not None)
    allowed = (1, 1 + kills) if at_kill == "in flight" else (1, 1)
    problems = []
    if promise is None:
        problems.append("never created")
    elif promise.state is not State.RESOLVED:
        problems.append(f"ended {promise.state.value}: {promise.value!r}")
    if not records:
        problems.append("never delivered: no send in the outbox")
    if promise is not None and promise.settled_at is not None:
        late = [r for r in records if r["time"] > promise.settled_at]
        if late:
            problems.append(f"executed after it settled (pid {late[0]['pid']}, "
                            f"{late[0]['time'] - promise.settled_at:.3f} s after)")
        early = [r for r in records if r["time"] <= promise.settled_at]
        twice = [r for r in early[:-1] if ev.deaths.get(r["pid"], 0.0) < r["time"]]
        if twice:
            problems.append(f"executed twice though pid {twice[0]['pid']} never died mid-run")
    if at_kill == "in flight" and ev.kill is not None and not any(r["time"] > ev.kill.at for r in records):
        problems.append("in flight at the kill, yet never ran again")
    if len(records) > allowed[1]:
        problems.append(f"executed {len(records)} times, at most {allowed[1]} allowed")
    return Branch(branch_id, name, at_kill, len(records), allowed, problems)


def _attempts(ev: Evidence, promise_id: str, promise: Promise | None, records: list[dict[str, Any]],
              delay: float) -> list[Attempt]:
    """Attempts from the claims seen, each outbox send placed in its attempt (or one of its own)."""
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
        home.sends.append(round(t, 3))
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
