"""What each chaos round does (whom to kill, when, the notify channels' delays), and the tally.

Random rounds draw from a seeded generator, so `--seed` replays them exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .verdict import Report

# Failpoints inside store writes, and how many hits the busiest process reaches in a short
# run, with some margin: the N of `NAME:N` is drawn up to that, so the crash lands inside
# the run. Measured with group commit (fewer, larger writes): append.* fired in every one
# of 4 runs up to N = 7 and missed from 8, locked.hold up to 16 and missed at 24. Keep these
# in step with the runner's writes, or store-write rounds quietly stop killing anything.
FAILPOINTS = {"append.mid": 6, "append.before_sync": 6, "append.after_sync": 6, "locked.hold": 14}
# On a store several supervisors share: two run, one is killed with its workers, the
# other runs its branches once its heartbeat lapses.
PEER = "one-of-two"


@dataclass(frozen=True)
class Plan:
    """What one round does: whom it kills, when, and how long each channel takes."""

    target: str  # "workers", "supervisor", "store-write" or "one-of-two" (PEER)
    kill_after: float  # seconds after the root is created (for store-write: a backstop)
    delays: dict[str, float]  # the notify scenario's channels; empty for any other function
    crash_at: str | None = None  # RUNNER_STORE_CRASH_AT for the first supervisor
    workers: int = 2

    @property
    def supervisors(self) -> int:
        """How many supervisors the round starts: two when it kills one of them."""
        return 2 if self.target == PEER else 1

    def describe(self, *, long: bool = False) -> str:
        if self.crash_at:
            backstop = f" (else the supervisor group at {self.kill_after:.3f} s)" if long else ""
            return f"store write {self.crash_at}{backstop}"
        return f"{self.target} at {self.kill_after:.3f} s"

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "kill_after": self.kill_after, "delays": self.delays,
                "crash_at": self.crash_at, "workers": self.workers}


def fixed_plan(kill_after: float, target: str, workers: int = 2, *, timed: bool = True) -> Plan:
    """Delays scaled to the kill instant: slack and sms settle before it, email and push are in flight.

    Untimed (any function but notify's): the kill instant alone; the run takes what it takes.
    """
    share = {"email": 1.25, "sms": 0.25, "slack": 0.1, "push": 1.5} if timed else {}
    return Plan(target, kill_after, {ch: round(kill_after * f, 3) for ch, f in share.items()}, None, workers)


def random_plan(rng: random.Random, index: int, workers: int = 2, span: float | None = None, *,
                shared: bool = False) -> Plan:
    """A random instant; targets take turns: workers, supervisor, a store write (on a shared
    store, whose writes have no failpoints: one of two supervisors instead).

    Without `span`, short random notify delays and an instant among them; with it (any
    other function), no delays and an instant within the first `span` seconds.
    """
    if span is None:
        delays = {"email": rng.uniform(0.25, 0.6), "sms": rng.uniform(0.1, 0.3),
                  "slack": rng.uniform(0.05, 0.15), "push": rng.uniform(0.3, 0.8)}
        delays = {ch: round(d, 3) for ch, d in delays.items()}
    else:
        delays = {}
    longest = max(delays.values()) if span is None else span
    kind = ("workers", "supervisor", PEER if shared else "store-write")[index % 3]
    if kind == "store-write":
        point = rng.choice(sorted(FAILPOINTS))
        crash_at = f"{point}:{rng.randint(1, FAILPOINTS[point])}"
        # The failpoint is the kill; a group kill near the end is the backstop if it never fires.
        return Plan(kind, round(longest * 1.05, 3), delays, crash_at, workers)
    # Killing workers (or one of two supervisors) proves something only while a branch is
    # in flight, so their instant falls before the longest channel ends; a supervisor kill
    # may land anywhere, even while the workflow itself completes.
    latest = longest * (1.05 if kind == "supervisor" else 0.9)
    return Plan(kind, round(rng.uniform(0.01, latest), 3), delays, None, workers)


@dataclass
class Summary:
    rounds: int = 0
    kills: int = 0
    violations: int = 0
    by_target: dict[str, int] = field(default_factory=dict)
    first_violation: int | None = None

    def add(self, report: Report) -> None:
        self.rounds += 1
        if report.kill is not None and report.kill.pids:
            self.kills += 1
            self.by_target[report.plan.target] = self.by_target.get(report.plan.target, 0) + 1
        if not report.ok:
            self.violations += 1
            if self.first_violation is None:
                self.first_violation = report.number

    def line(self) -> str:
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(self.by_target.items()))
        text = f"{self.rounds} rounds, {self.kills} kills ({kinds or 'none'}), {self.violations} violations"
        if self.first_violation is not None:
            text += f"; first violation in round {self.first_violation}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "kills": self.kills, "kills_by_target": self.by_target,
                "violations": self.violations, "first_violation": self.first_violation}


def plans(rounds: int, *, kill_after: float, target: str, randomize: bool, seed: int,
          workers: int = 2, timed: bool = True, shared: bool = False) -> Iterator[Plan]:
    """The rounds' plans; `timed` for the notify scenario, whose channel delays the plan sets;
    `shared` for a store several supervisors share."""
    rng = random.Random(seed)
    span = None if timed else kill_after
    for index in range(rounds):
        if randomize:
            yield random_plan(rng, index, workers, span, shared=shared)
        else:
            yield fixed_plan(kill_after, target, workers, timed=timed)
