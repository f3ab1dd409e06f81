"""A replay's reads of its children (runner/children.py): settled ones once, many at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.children import MIN_READS, Children
from runner.store import NewPromise, State, open_store


class Counting:
    """A store whose get and children calls are counted."""

    def __init__(self, store: Any) -> None:
        self.store, self.gets, self.listings = store, 0, 0

    def get(self, pid: str) -> Any:
        self.gets += 1
        return self.store.get(pid)

    def children(self, parent: str) -> Any:
        self.listings += 1
        return self.store.children(parent)


def test_children_awaited_one_by_one_are_read_in_listings_not_one_get_each(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    ids = [f"root.{i}" for i in range(1000)]
    leaves = [NewPromise(c, "leaf", parent="root", runnable=False) for c in ids]
    store.create([NewPromise("root", "wf"), *leaves])
    for c in ids[:-1]:
        store.settle(c, State.RESOLVED, c)
    counted = Counting(store)
    children = Children(counted, "root", [])  # type: ignore[arg-type]

    assert [children.lookup(c).value for c in ids[:-1]] == ids[:-1]  # type: ignore[union-attr]
    assert counted.gets < MIN_READS and counted.listings == 1  # one listing read them all
    last = children.lookup(ids[-1])
    assert last is not None and not last.settled
    store.settle(ids[-1], State.RESOLVED, "late")
    found = children.lookup(ids[-1])  # a pending child is read again, never kept
    assert found is not None and found.value == "late"
    assert children.lookup("elsewhere") is None
    store.close()
