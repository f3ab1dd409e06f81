"""Several supervisors on one store: identity, heartbeats, one sweeper, taking over the dead.

On a store that says `shared` (a database, reached from several hosts or by several
`runner start` on one URL), each supervisor joins under a fresh id that its workers'
owner ids carry, and beats every quarter of the lapse, on a thread and a store handle
of its own: a loop busy with a long store call (a retention pass, say) must not stop
the beats, or a live supervisor would be declared dead. The holder of the store's
sweep lock, one supervisor at a time, fires timers, times out deadlines, expires
leases, and declares dead every supervisor whose last beat is older than the lapse
(or, on its own host, one whose connection and process are both gone: a death seen
needs no waiting): it retires that id and gives back the claims of its workers, as
after any death.

A supervisor cut off for longer than the lapse (a partition) comes back retired. Its
beat says so and never revives it; it kills its workers, whose late results the claim
counters fence off anyway, and joins again under a new id. Between being retired and
noticing, a worker of it may still claim: the sweeper gives back every claim whose
supervisor is not live, and those workers are killed within one beat.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from runner.store import PromiseStore, StoreIOError, StoreUnavailable
from runner.store.deaths import Decide

from .owners import owner_id, owner_supervisor

log = logging.getLogger(__name__)

DEFAULT_LAPSE = 10.0  # seconds without a beat before a supervisor is declared dead
MIN_LAPSE = 1.0  # shorter lapses would declare busy (not dead) supervisors dead
BEATS_PER_LAPSE = 4  # so one late beat (a loaded machine) is not a death
CHECK = 0.25  # seconds between the sweeper's looks at the beats: a death is seen within lapse + CHECK
UNREACHABLE = (StoreUnavailable, StoreIOError)  # the link to the store is down: retried at the next tick


def died_here(info: dict[str, Any]) -> bool:
    """Whether a supervisor that described itself so ran on this host and its process is gone
    (its pid free, or taken by a process that started after it)."""
    pid, started = info.get("pid"), info.get("started")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int) or not isinstance(started, float):
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > started + 1.0
    except psutil.NoSuchProcess:
        return True


def new_sid() -> str:
    """A supervisor id, unique across hosts and generations (never reused once retired)."""
    return secrets.token_hex(6)


class SharedSupervision:
    """This supervisor's part in supervising a shared store; the Supervisor's loop calls
    `tick()` whenever `due()` has come."""

    def __init__(self, store: PromiseStore, lapse: float, decide: Decide, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.lapse = lapse
        self.decide = decide
        self.clock = clock
        self.sid = new_sid()
        self.sweeping = False
        self._next_check = self._next_orphans = -1.0
        self._unreachable_since: float | None = None
        self._dead_owners: set[str] = set()  # workers of supervisors we retired, not given back yet
        self._retired: str | None = None  # an id of ours that a beat found retired
        self._beats_failing = False
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def owner(self, pid: int) -> str:
        return owner_id(pid, self.sid)

    def join(self) -> None:
        self.store.join_supervisor(self.sid)
        log.info("joined the store's supervisors as %s (declared dead after %.1f s without a beat)",
                 self.sid, self.lapse)

    def rejoin(self) -> str:
        """Join again under a new id (the old one was retired); returns the old one."""
        old, self.sid = self.sid, new_sid()
        self.join()
        return old

    # -- beats ------------------------------------------------------------------------

    def start_beating(self, open_handle: Callable[[], PromiseStore]) -> None:
        """Beat every quarter of the lapse on a thread, through a handle `open_handle` opens."""
        self._beater = threading.Thread(target=self._beat_forever, args=(open_handle,), name="beats",
                                        daemon=True)
        self._beater.start()

    def stop_beating(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join()

    def _beat_forever(self, open_handle: Callable[[], PromiseStore]) -> None:
        handle: PromiseStore | None = None
        while not self._stop.wait(self.lapse / BEATS_PER_LAPSE):
            try:
                handle = handle or open_handle()
            except UNREACHABLE as exc:
                self._beat_failed(exc)
                continue
            try:
                self.beat(handle)
            except Exception:  # a beat thread that dies would have us declared dead
                log.exception("a heartbeat failed; retrying")
        if handle is not None:
            handle.close()

    def beat(self, handle: PromiseStore) -> None:
        """One beat of our current id; found retired, it is noted for the loop's next tick."""
        sid = self.sid
        try:
            alive = handle.beat_supervisor(sid)
        except UNREACHABLE as exc:
            self._beat_failed(exc)
            return
        if self._beats_failing:
            self._beats_failing = False
            log.warning("heartbeats reach the store again")
        if not alive:
            self._retired = sid

    def _beat_failed(self, exc: BaseException) -> None:
        if not self._beats_failing:
            self._beats_failing = True
            log.warning("a heartbeat could not reach the store (%s); retrying", exc)

    # -- the loop's ticks --------------------------------------------------------------

    def due(self) -> float:
        """The clock time the next tick is due (every supervisor tries for the sweep lock)."""
        return min([self._next_check, *([self._next_orphans] if self.sweeping else [])])

    def tick(self) -> bool:
        """Sweep for the dead if we hold the sweep lock. False when a beat found us retired:
        the caller kills its workers and calls `rejoin()`."""
        try:
            alive = self._tick(self.clock())
        except UNREACHABLE as exc:
            self._unreachable(exc)
            return True
        if self._unreachable_since is not None:
            log.warning("the store is reachable again after %.1f s", self.clock() - self._unreachable_since)
            self._unreachable_since = None
        return alive

    def _tick(self, now: float) -> bool:
        if self._retired == self.sid:
            return False
        if now >= self._next_check:
            self._next_check = now + CHECK
            self.sweeping = self.store.lock_sweeper(self.lapse)
            if self.sweeping and self._retire_lapsed():
                self._next_orphans = now  # give their claims back now
        if self.sweeping and now >= self._next_orphans:
            self._next_orphans = now + 1.0
            self._release_orphans()
        return True

    def _retire_lapsed(self) -> bool:
        """Declare dead each supervisor whose last beat is older than the lapse, or that died
        on this host (its connection gone, its process too: seen, not guessed); whether any was.

        Its workers (as it last described them) are given back too, claims or none: the
        workflows they kept in memory lose their affinity, rather than wait out its grace.
        """
        dead = {sid: f"missed its heartbeats for {self.lapse:.1f} s" for sid, age in
                self.store.supervisor_beats().items() if sid != self.sid and age > self.lapse}
        dead.update({str(info["id"]): f"died (pid {info.get('pid')} is gone)"
                     for info in self.store.lost_supervisors() if info.get("id") not in (None, self.sid)
                     and died_here(info)})
        retired = False
        for sid, why in dead.items():
            info = self.store.retire_supervisor(sid)
            if info is not None:
                retired = True
                self._dead_owners.update(str(owner) for owner in (info.get("owners") or {}).values())
                log.warning("supervisor %s %s: declared dead, its claims are given back", sid, why)
        return retired

    def _release_orphans(self) -> int:
        """Give back every claim whose owner's supervisor is not live.

        The claims are read before the live supervisors: a supervisor joins before its
        workers claim, so a claim read first whose supervisor is missing from the later
        read belongs to a retired one (or to none), never to one that just joined.
        """
        claims = self.store.claims()
        live = set(self.store.supervisor_beats()) | {self.sid}
        orphans = {t.owner for t in claims if t.owner and owner_supervisor(t.owner) not in live}
        released = 0
        owners = sorted(orphans | self._dead_owners)
        for owner in owners:
            how = f"its supervisor {owner_supervisor(owner) or '(none)'} was declared dead"
            released += len(self.store.release_owner(owner, how=how, decide=self.decide))
            self._dead_owners.discard(owner)
        if released:
            log.info("gave back %d claims of %d workers of dead supervisors", released, len(owners))
        return released

    def _unreachable(self, exc: BaseException) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = self.clock()
            log.warning("the store cannot be reached (%s); retrying", exc)
        self.sweeping = False
