"""What the inspection commands show about promises, gathered from the store as plain dicts.

The text views and `--json` print the same dicts, so the JSON shapes documented in
README.md are exactly what these functions return. Times are Unix seconds (floats);
durations are seconds, rounded to the millisecond.

A pending promise's attempt and worker come from its task; a settled promise
records the attempt that settled it (null when no worker ever ran it).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from runner.store import NotFound, Promise, PromiseStore, State, Task

from ..owners import owner_pid
from ..parked import parked_info


def duration(p: Promise, now: float) -> float:
    """Settled: how long it took from creation. Pending: how long it has been running."""
    end = p.settled_at if p.settled_at is not None else now
    return round(max(0.0, end - p.created_at), 3)


def summary(p: Promise, now: float) -> dict[str, Any]:
    return {"id": p.id, "state": p.state.value, "func": p.func, "parent": p.parent,
            "created_at": p.created_at, "settled_at": p.settled_at, "duration": duration(p, now),
            "attempt": p.attempt or None}


def task_info(task: Task | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {"state": task.state.value, "attempt": task.attempt, "counter": task.counter,
            "owner": task.owner, "worker_pid": owner_pid(task.owner), "expires_at": task.expires_at,
            "not_before": task.not_before or None, "awaiting": list(task.awaiting),
            "last_error": task.last_error}


def _error(p: Promise) -> Any:
    return p.value if p.settled and p.state is not State.RESOLVED else None


def detail(store: PromiseStore, promise_id: str, now: float | None = None) -> dict[str, Any]:
    """Everything about one promise, and the task that runs it while it is pending."""
    now = time.time() if now is None else now
    p = store.get(promise_id)
    if p is None:
        raise NotFound(promise_id)
    task = store.task(promise_id) if not p.settled else None
    info = summary(p, now)
    info.update({
        "args": p.args, "tags": p.tags, "timeout": p.timeout,
        "value": p.value if p.state is State.RESOLVED else None, "error": _error(p),
        "children": len(store.children(promise_id)), "task": task_info(task),
        "parked": parked_info(task),
    })
    return info


def listing(store: PromiseStore, *, state: State | None = None, parent: str | None = None,
            prefix: str | None = None, limit: int = 100, cursor: int = 0,
            now: float | None = None, tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """One page of promises in creation order; pass `cursor` back for the next page."""
    now = time.time() if now is None else now
    page = store.search(state=state, parent=parent, prefix=prefix, limit=limit, cursor=cursor, tags=tags)
    return {"items": [summary(p, now) for p in page.items], "cursor": page.cursor}


def node(p: Promise, task: Task | None, now: float) -> dict[str, Any]:
    """One promise of a call graph: what it runs, where it stands, how long it took."""
    info = summary(p, now)
    del info["parent"]
    info.update({"task": task.state.value if task else None,
                 "attempt": task.attempt if task else p.attempt or None,
                 "worker_pid": owner_pid(task.owner) if task else None, "error": _error(p),
                 "parked": parked_info(task)})
    return info


def _node(store: PromiseStore, p: Promise, now: float) -> dict[str, Any]:
    return node(p, None if p.settled else store.task(p.id), now)


def tree(store: PromiseStore, root_id: str, now: float | None = None) -> dict[str, Any]:
    """The call graph below `root_id`, each node with its `children` (built without recursion)."""
    now = time.time() if now is None else now
    root = store.get(root_id)
    if root is None:
        raise NotFound(root_id)
    top = _node(store, root, now)
    stack = [top]
    while stack:
        parent = stack.pop()
        parent["children"] = [_node(store, c, now) for c in store.children(parent["id"])]
        stack.extend(parent["children"])
    return top


def branches(store: PromiseStore, root_id: str, *, rows: int = 20,
             now: float | None = None) -> dict[str, Any]:
    """A run's root and its direct children, for live progress.

    Only the first `rows` branches are read in detail (one store read each while
    pending); the rest are counted by state in `more`.
    """
    now = time.time() if now is None else now
    root = store.get(root_id)
    if root is None:
        raise NotFound(root_id)
    children = store.children(root_id)
    more = Counter(c.state.value for c in children[rows:])
    return {"root": _node(store, root, now), "branches": [_node(store, c, now) for c in children[:rows]],
            "more": dict(more)}
