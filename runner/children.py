"""How a workflow's replay reads its children: each settled one once, many at a time.

A settled promise never changes, so once read it is kept for the rest of the run (in
memory, across wake-ups). Awaiting children one by one would otherwise read each with
its own `get`: on a database, a round trip per child. After many such reads the whole
listing is read again instead, as often as a quarter of its length in reads, so a read
costs a few rows of one listing rather than a round trip of its own.
"""

from __future__ import annotations

from runner.store import Promise, PromiseStore

MIN_READS = 32  # reads one by one before the first listing again


class Children:
    def __init__(self, store: PromiseStore, parent: str, listing: list[Promise]) -> None:
        self._store, self._parent = store, parent
        self._settled = {p.id: p for p in listing if p.settled}
        self._reads = 0
        self._listed = len(listing)

    def lookup(self, pid: str) -> Promise | None:
        """The child as stored now: from memory once seen settled, else read."""
        found = self._settled.get(pid)
        if found is not None:
            return found
        self._reads += 1
        if self._reads < max(MIN_READS, self._listed // 4):
            found = self._store.get(pid)
        else:
            listing = self._store.children(self._parent)
            self._reads, self._listed = 0, len(listing)
            self._settled.update((p.id, p) for p in listing if p.settled)
            found = self._settled.get(pid) or next((p for p in listing if p.id == pid), None)
            if found is None:  # not a child of ours: what was asked for is read as asked
                found = self._store.get(pid)
        if found is not None and found.settled:
            self._settled[pid] = found
        return found
