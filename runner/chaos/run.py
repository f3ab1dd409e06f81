"""`runner chaos`: kill a live run at a chosen instant, then judge it from what it left behind.

A round starts a real supervisor (`runner start`) as a separate process, creates the
scenario's run (the notify workflow, whose channel delays straddle the kill instant, or
any registered function with the given arguments), and kills: the workers holding the
run's claims, the supervisor with all its workers, or whichever process first reaches a
store failpoint (a SIGKILL inside a store write); on a store several supervisors share,
it may start two and kill one with its workers, and the other takes over its branches
once its heartbeat lapses. It restarts what is needed and waits
for the run to finish. While the run goes, the harness watches the store's claims (who
ran what, when, under which fencing counter); afterwards it reads the run's promises and
the effects journal (runner.effects), which the functions write outside the store, with
pid and time. `verdict` judges the two together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.store import CHANGES, Promise, PromiseStore, State, StoreError, Task

from .. import effects
from ..errors import RunnerError
from ..invoke import submit
from ..location import StoreLocation
from ..owners import gone, owner_pid, owner_supervisor
from ..registry import Registry
from ..worker import die_with_parent
from .plan import PEER, Plan, Summary
from .verdict import Evidence, Kill, Report, Scenario, Seen, Snapshot, judge

TARGETS = ("workers", "supervisor", PEER)
DEFAULT_LAPSE = 2.0  # the supervisors' heartbeat lapse in a round: short, so a round is short
TAKEOVER_SLACK = 0.5  # seconds the harness may take to see a branch taken over
CRASH_ENV = "RUNNER_STORE_CRASH_AT"  # store/faults.py: SIGKILL at the N-th hit of a named point
POLL = 0.05  # seconds: backstop between looks when no store write woke the harness
UP_TIMEOUT = 20.0  # seconds for a started supervisor to have all its workers


class ChaosError(RunnerError):
    """The harness itself could not run a round (not a verdict on the runner)."""


@dataclass
class Started:
    """One `runner start` the harness launched, in a process group of its own."""

    proc: subprocess.Popen[bytes]
    log: Path
    launched: float
    up: float = 0.0
    workers: dict[int, str] = field(default_factory=dict)  # pid -> claim owner
    sid: str | None = None  # its id on a store several supervisors share

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def wait_gone(pids: Sequence[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise ChaosError(f"processes {sorted(pids)} outlived SIGKILL for {timeout:g} s")
        time.sleep(0.002)


class Round:
    """One run of the workflow with one kill, observed from outside, then judged."""

    def __init__(self, plan: Plan, number: int, location: StoreLocation, workdir: Path, *,
                 registry: Registry, scenario: Scenario, apps: Sequence[str] = (),
                 lapse: float = DEFAULT_LAPSE) -> None:
        self.plan = plan
        self.number = number
        self.location = location
        self.workdir = workdir
        self.apps = list(apps)
        self.registry = registry
        self.scenario = scenario
        self.lapse = lapse
        self.root = f"chaos-{uuid.uuid4().hex[:10]}"
        self.journal = workdir / effects.JOURNAL_NAME
        self.started: list[Started] = []
        self.seen: dict[tuple[str, int], Seen] = {}
        self.deaths: dict[int, float] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []
        self._store: PromiseStore | None = None

    @property
    def store(self) -> PromiseStore:
        assert self._store is not None
        return self._store

    def run(self) -> Report:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._store = self.location.open()
        watch = self.store.watch(CHANGES)
        kill: Kill | None = None
        snapshot: Snapshot | None = None
        try:
            first = self._launch(self.plan.crash_at)
            for _ in range(self.plan.supervisors - 1):
                self._launch(None)
            args = self.scenario.run_args(self.root, self.plan)
            t0 = self._create(args).created_at
            try:
                kill, snapshot = self._kill_phase(first, watch, t0)
                deadline = time.time() + self._run_budget()
                if self._observe(watch, deadline) != "done":
                    budget = self._run_budget()
                    why = self._why_not()
                    self.problems.append(f"the run did not finish within {budget:.0f} s of the kill{why}")
            except StoreError as exc:  # after a crash the store must open and read: invariant 6
                self.problems.append(f"the store failed after the crash: {exc}")
            records = self._records()
            root, children = self._final(args, t0)
        finally:
            watch.close()
            self._stop_all()
            self.store.close()
        evidence = Evidence(
            number=self.number, plan=self.plan, root=root, children=children, args=args, t0=t0,
            kill=kill, snapshot=snapshot, seen=list(self.seen.values()), deaths=self.deaths,
            records=records, restarts=[(s.launched, s.up) for s in self.started[self.plan.supervisors:]],
            store=str(self.location), workdir=str(self.workdir), problems=self.problems, notes=self.notes,
            scenario=self.scenario)
        return judge(evidence)

    def _final(self, args: list[Any], t0: float) -> tuple[Promise, list[Promise]]:
        """The root and the leaves to judge: every promise of the run that is not a workflow."""
        try:
            root = self.store.get(self.root)
            if root is not None:
                return root, [p for p in [root, *self._descendants()] if not self._is_workflow(p.func)]
            self.problems.append(f"the root promise {self.root} is gone from the store")
        except StoreError as exc:
            self.problems.append(f"the store cannot be read after the crash: {exc}")
        return Promise(self.root, State.PENDING, self.scenario.workflow, args, None, {}, None, t0), []

    def _descendants(self) -> list[Promise]:
        """Every promise below the root, parents before their children."""
        found, index = self.store.children(self.root), 0
        while index < len(found):
            found += self.store.children(found[index].id)
            index += 1
        return found

    def _is_workflow(self, func: str) -> bool:
        """A workflow replays by design, so only the leaves are judged by their executions."""
        return func in self.registry.names() and self.registry.lookup(func).is_workflow

    # -- the phases ----------------------------------------------------------------

    def _create(self, args: list[Any]) -> Promise:
        return submit(self.store, self.registry, self.scenario.workflow, args, self.root)

    def _kill_phase(self, first: Started, watch: Any, t0: float) -> tuple[Kill | None, Snapshot | None]:
        crash = self.plan.crash_at is not None
        why = self._observe(watch, t0 + self.plan.kill_after, watch_deaths=first)
        if why == "done":
            self.notes.append(f"the run finished before the kill ({self.plan.describe()}): nothing killed")
            return None, None
        if why.startswith("died:"):
            victim, when = int(why[5:]), time.time()
            self.deaths[victim] = when
            if not crash:
                self.problems.append(f"process {victim} died on its own before the kill")
            how = (f"store crash at {self.plan.crash_at} killed pid {victim}; "
                   "then SIGKILL of the rest of the supervisor group")
            kill, snapshot = self._kill_group(first, how)
            kill.victim, kill.victim_at = victim, when
        elif self.plan.target == PEER:
            peer = self._busiest()
            kill, snapshot = self._kill_group(peer, "SIGKILL of one of two supervisors and all its "
                                              "workers; the other takes over")
            self._late(kill.at - t0)
            self._takeover(peer, kill.at, snapshot)
            return kill, snapshot
        elif self.plan.target == "workers":
            kill, snapshot = self._kill_workers(first)
            if not kill.pids:
                self.notes.append(f"at {kill.at - t0:.3f} s no worker held a claim of the run: nobody killed")
                return None, None
            self._late(kill.at - t0)
        else:
            how = "SIGKILL of the supervisor and all its workers"
            if crash:
                how = f"store failpoint {self.plan.crash_at} never fired; {how}"
            kill, snapshot = self._kill_group(first, how)
            self._late(kill.at - t0)
        if kill.group:  # (of one of two supervisors: the other takes over, see above)
            self._launch(None)
        return kill, snapshot

    def _late(self, instant: float) -> None:
        late = instant - self.plan.kill_after
        if late > 0.05:
            self.notes.append(f"the kill came {late:.3f} s after the planned {self.plan.kill_after:.3f} s "
                              "(a busy machine)")

    def _busiest(self) -> Started:
        """The live supervisor whose workers hold most of the run's claims (the first, if none)."""
        held = [owner_supervisor(t.owner) for t in self.store.claims() if self._ours(t.id)]
        live = [s for s in self.started if s.alive()]
        return max(live, key=lambda s: (held.count(s.sid), -self.started.index(s)))

    def _takeover(self, victim: Started, killed_at: float, snapshot: Snapshot) -> None:
        """The run's branches the victim held must run elsewhere within the lapse and a second."""
        held = {pid for pid, owner in snapshot.owners.items() if owner_supervisor(owner) == victim.sid}
        if not held:
            self.notes.append("the killed supervisor held no claim of the run")
            return
        bound = killed_at + self.lapse + 1.0 + TAKEOVER_SLACK
        watch = self.store.watch(CHANGES)
        try:
            while held:
                taken = {t.id for t in self._look() if owner_supervisor(t.owner) != victim.sid}
                held = {pid for pid in held - taken if not self._settled(pid)}
                if held and time.time() > bound:
                    self.problems.append(f"{', '.join(sorted(held))} of the killed supervisor did not run "
                                         f"elsewhere within {self.lapse + 1.0:g} s (lapse {self.lapse:g} s)")
                    return
                watch.wait(POLL)
            after = time.time() - killed_at
            self.notes.append(f"the other supervisor took over {after:.3f} s after the kill "
                              f"(lapse {self.lapse:g} s)")
        finally:
            watch.close()

    def _settled(self, promise_id: str) -> bool:
        promise = self.store.get(promise_id)
        return promise is not None and promise.settled

    def _info(self, pid: int) -> dict[str, Any]:
        """What the supervisor of this pid published, if it runs on the store."""
        return next((i for i in self.store.supervisors() if i.get("pid") == pid), {})

    def _kill_workers(self, sup: Started) -> tuple[Kill, Snapshot]:
        """SIGKILL the workers holding this run's claims; the supervisor reaps and restarts them."""
        owners = {owner: int(pid) for info in self.store.supervisors()
                  for pid, owner in (info.get("owners") or {}).items()}
        snapshot = self._snapshot()
        pids = sorted({owners[o] for o in snapshot.owners.values() if o in owners})
        at = time.time()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(pids)
        for pid in pids:
            self.deaths[pid] = at
        how = f"SIGKILL of worker{'s' if len(pids) > 1 else ''} {', '.join(map(str, pids))}"
        return Kill(at=at, pids=pids, how=how, group=False), snapshot

    def _kill_group(self, sup: Started, how: str) -> tuple[Kill, Snapshot]:
        """SIGKILL the supervisor's whole process group; read the store once all are dead."""
        info = self._info(sup.proc.pid)
        pids = sorted({sup.proc.pid, *sup.workers, *map(int, info.get("workers") or [])})
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sup.proc.pid, signal.SIGKILL)
        sup.proc.wait()
        wait_gone(pids)
        for pid in pids:
            self.deaths.setdefault(pid, at)
        return Kill(at=at, pids=pids, how=how, group=True), self._snapshot()

    def _snapshot(self) -> Snapshot:
        """Which of the run's promises are held, and by whom; which were ever started."""
        claims = [t for t in self.store.claims() if self._ours(t.id)]
        owners = {t.id: t.owner for t in claims if t.owner}
        started = set(owners)
        for child in self._descendants():
            if not child.settled and child.id not in started:
                task = self.store.task(child.id)
                if task is not None and task.counter > 0:
                    started.add(child.id)
        return Snapshot(owners=owners, started=started)

    def _run_budget(self) -> float:
        return 20.0 + 4 * (self.plan.kill_after + max(self.plan.delays.values(), default=0.0))

    def _why_not(self) -> str:
        dead = [s for s in self.started if not s.alive()]
        if dead:
            return f"; runner start exited {dead[-1].proc.returncode}: {dead[-1].log_tail()}"
        return ""

    # -- watching ------------------------------------------------------------------

    def _ours(self, promise_id: str) -> bool:
        return promise_id == self.root or promise_id.startswith(self.root + ".")

    def _observe(self, watch: Any, until: float, *, watch_deaths: Started | None = None) -> str:
        """Look at every store write until the root settles ("done"), `until` ("time") or a death."""
        while True:
            self._look()
            root = self.store.get(self.root)
            if root is not None and root.settled:
                return "done"
            if watch_deaths is not None:
                pids = [watch_deaths.proc.pid, *watch_deaths.workers]
                victim = next((pid for pid in pids if gone(pid)), None)
                if victim is not None:
                    return f"died:{victim}"
            now = time.time()
            if now >= until:
                return "time"
            watch.wait(min(until - now, POLL))

    def _look(self) -> list[Task]:
        """Note the run's claims held now; returns them."""
        now = time.time()
        ours = [task for task in self.store.claims() if self._ours(task.id)]
        for task in ours:
            self._saw(task, now)
        return ours

    def _saw(self, task: Task, now: float) -> None:
        seen = self.seen.get((task.id, task.counter))
        if seen is None:
            pid = owner_pid(task.owner) or 0
            self.seen[(task.id, task.counter)] = Seen(task.id, task.counter, pid, now, now)
        else:
            seen.last = now

    def _records(self) -> list[dict[str, Any]]:
        """The run's lines of the effects journal (a line cut by a SIGKILL mid-write is no effect)."""
        return [r for r in effects.read(self.journal) if self._ours(str(r.get("promise_id", "")))]

    # -- processes -----------------------------------------------------------------

    def _launch(self, crash_at: str | None) -> Started:
        """Start `runner start` on the store in a session of its own, and wait for its workers."""
        cmd = [sys.executable, "-m", "runner", "start", "--workers", str(self.plan.workers),
               "--store", self.location.spec, "--log-level", "info", "--lapse", f"{self.lapse}s"]
        for app in self.apps:
            cmd += ["--app", app]
        env = dict(os.environ)
        env[effects.JOURNAL_ENV] = str(self.journal)  # outside the store: evidence the store cannot touch
        env.pop(CRASH_ENV, None)
        if crash_at:
            env[CRASH_ENV] = crash_at
        log = self.workdir / f"supervisor-{len(self.started) + 1}.log"
        with open(log, "wb") as out:
            # Its own session, so a group kill takes exactly it and its workers; and it dies
            # with the harness, however the harness ends, instead of running on unwatched.
            harness = os.getpid()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True,
                                    preexec_fn=lambda: die_with_parent(harness))
        started = Started(proc, log, time.time())
        self.started.append(started)
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            info = self._info(proc.pid)
            if len(info.get("workers") or ()) >= self.plan.workers:
                started.up = time.time()
                started.workers = {int(pid): owner for pid, owner in (info.get("owners") or {}).items()}
                started.sid = info.get("id")
                return started
            if crash_at and proc.poll() == -signal.SIGKILL:
                # The failpoint fired in the supervisor's own start-up write: that is the
                # kill of this round, and the kill phase sees the death and restarts.
                self.notes.append(f"the store failpoint {crash_at} fired before the workers were up")
                return started
            if proc.poll() is not None or time.monotonic() > deadline:
                reason = f"exited {proc.returncode}" if proc.poll() is not None else "did not come up"
                if self.started[:-1]:  # a restart after a crash: the runner's fault, not the harness's
                    self.problems.append(f"runner start after the kill {reason}: {started.log_tail()}")
                    return started
                raise ChaosError(f"runner start {reason}: {started.log_tail()}")
            time.sleep(0.01)

    def _stop_all(self) -> None:
        """SIGTERM (drain) the live supervisor, then SIGKILL every group we started, and reap."""
        for started in self.started:
            if started.alive():
                started.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    started.proc.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started.proc.pid, signal.SIGKILL)
            started.proc.wait()


def run_rounds(plan_list: Iterator[Plan], *, workdir: Path, store: StoreLocation | None, registry: Registry,
               scenario: Scenario, apps: Sequence[str] = (), lapse: float = DEFAULT_LAPSE,
               on_report: Callable[[Report], None] = lambda _: None) -> tuple[list[Report], Summary]:
    """Run every round in turn (each in a fresh store unless one is given)."""
    reports, summary = [], Summary()
    for number, plan in enumerate(plan_list, 1):
        round_dir = workdir / f"round-{number:03d}"
        where = store if store is not None else StoreLocation(round_dir / "store")
        report = Round(plan, number, where, round_dir, registry=registry, scenario=scenario, apps=apps,
                       lapse=lapse).run()
        summary.add(report)
        reports.append(report)
        on_report(report)
    return reports, summary
