"""`runner status` data: the supervisor, its workers and what each runs, the queue.

Process figures come from psutil. A worker is matched to its claims by owner
("<pid>@<start time>"), so a recycled pid is never mistaken for the worker.
`running_for` counts from when the current claim was taken, and `expires_in`
is the time left on the lease.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from runner.store import PromiseStore, Task

from ..location import StoreLocation
from ..owners import is_owner, owner_pid
from ..parked import parked_info


def _process(pid: int | None, owner: str | None = None) -> psutil.Process | None:
    """The live process, or None; with `owner`, only if it is still that very process."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if owner is not None and not is_owner(owner, pid, proc.create_time()):
            return None  # the worker died and its pid went to someone else
        proc.cpu_percent(None)  # starts the sample read by _usage
        return proc
    except psutil.Error:
        return None


def _usage(proc: psutil.Process | None) -> dict[str, Any]:
    if proc is None:
        return {"alive": False, "rss": None, "cpu_percent": None, "cpu_seconds": None}
    try:
        with proc.oneshot():
            times = proc.cpu_times()
            return {"alive": True, "rss": proc.memory_info().rss, "cpu_percent": proc.cpu_percent(None),
                    "cpu_seconds": round(times.user + times.system, 3)}
    except psutil.Error:
        return {"alive": False, "rss": None, "cpu_percent": None, "cpu_seconds": None}


def _peer(info: dict[str, Any]) -> dict[str, Any]:
    """One of the supervisors running on the store, as it describes itself."""
    return {"id": info.get("id"), "pid": info.get("pid"), "host": info.get("host"),
            "started": info.get("started"), "workers": len(info.get("workers") or ())}


def _claim(store: PromiseStore, task: Task, now: float) -> dict[str, Any]:
    p = store.get(task.id)
    return {"id": task.id, "func": p.func if p else None, "attempt": task.attempt,
            "running_for": round(now - task.claimed_at, 3) if task.claimed_at is not None else None,
            "expires_in": round(task.expires_at - now, 3) if task.expires_at is not None else None}


def _parked(store: PromiseStore, task: Task) -> dict[str, Any]:
    p = store.get(task.id)
    return {"id": task.id, "func": p.func if p else None, **(parked_info(task) or {})}


def status(store: PromiseStore, location: StoreLocation, *, sample: float = 0.1) -> dict[str, Any]:
    """Everything `runner status` shows; `sample` seconds are spent measuring CPU use."""
    info = store.supervisor()
    claims = store.claims()
    stats = store.stats()
    now = time.time()
    result: dict[str, Any] = {
        "store": str(location), "supervisor": None, "workers": [], "unowned_claims": [],
        "queue": {"ready": stats.ready, "claimed": stats.claimed, "waiting": stats.waiting,
                  "delayed": stats.delayed, "parked": stats.parked},
        "parked": [_parked(store, t) for t in store.parked()],
        "promises": dict(stats.by_state),
    }
    by_owner: dict[str | None, list[Task]] = {}
    for task in claims:
        by_owner.setdefault(task.owner, []).append(task)
    owners: dict[str, str] = {}
    if info is not None:
        owners = {str(k): str(v) for k, v in dict(info.get("owners") or {}).items()}
        supervisor = info.get("pid")
        procs = [_process(supervisor if isinstance(supervisor, int) else None)]
        procs += [_process(owner_pid(o), o) for o in owners.values()]
        time.sleep(sample)
        started = info.get("started")
        result["supervisor"] = {
            "pid": info.get("pid"), "id": info.get("id"), "host": info.get("host"), "started": started,
            "uptime": round(now - started, 3) if isinstance(started, int | float) else None,
            "workers": len(owners), "concurrency": info.get("concurrency"), **_usage(procs[0])}
        for owner, proc in zip(owners.values(), procs[1:], strict=True):
            held = by_owner.get(owner, [])
            result["workers"].append({"pid": owner_pid(owner), "owner": owner, **_usage(proc),
                                      "running": [_claim(store, t, now) for t in held]})
    # On a store several supervisors share, the others' workers hold claims too.
    every = store.supervisors()
    result["supervisors"] = [_peer(i) for i in every]
    known = {str(o) for i in every for o in dict(i.get("owners") or {}).values()} | set(owners.values())
    result["unowned_claims"] = [dict(_claim(store, t, now), owner=t.owner)
                                for t in claims if t.owner not in known]
    return result
