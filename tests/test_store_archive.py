"""The settled history: whole runs leave the live state for the history database, and
every read finds them there; retention removes whole runs; damage is reported."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import runner.store.replica as replica
from runner.store import CorruptStore, DirStore, NewPromise, State, open_store

NOW = 1_000.0


def run(s: DirStore, root: str, children: int = 3, *, settle: bool = True, at: float = NOW) -> None:
    """A root and its children, created resolved (settled at `at`), or with the root pending."""
    s.create([NewPromise(root, "wf", [root], runnable=False)], at)
    s.create([NewPromise(f"{root}.{i}", "leaf", [i], parent=root, resolved=True, value=i)
              for i in range(children)], at)
    if settle:
        s.settle(root, State.RESOLVED, {"done": root}, at)


@pytest.fixture
def s(store_dir: Path) -> Iterator[DirStore]:
    with closing(DirStore(store_dir)) as store:
        yield store


def test_whole_settled_runs_leave_memory_and_are_still_read(s: DirStore, store_dir: Path) -> None:
    other = DirStore(store_dir)  # open all along: the ARCHIVE frame drops them here too
    try:
        for i in range(5):
            run(s, f"r{i}")
        run(s, "live", settle=False)
        listed = s.search(limit=100, now=NOW).items
        assert s.archive_settled() == 5
        assert set(s.state.promises) == {"live", "live.0", "live.1", "live.2"}
        other.refresh()
        assert set(other.state.promises) == set(s.state.promises)
        for store in (s, other):
            assert store.get("r3.1") == listed[[p.id for p in listed].index("r3.1")]
            assert [p.id for p in store.children("r2")] == ["r2.0", "r2.1", "r2.2"]
            assert store.search(limit=100, now=NOW).items == listed  # creation order, both merged
            assert store.stats(now=NOW).by_state["resolved"] == 5 * 4 + 3
        with closing(DirStore(store_dir)) as fresh:
            assert fresh.search(limit=100, now=NOW).items == listed
    finally:
        other.close()


def test_pages_go_through_history_and_live_state_in_creation_order(s: DirStore) -> None:
    for i in range(6):
        run(s, f"r{i}", children=2, settle=i % 2 == 0)
    everything = s.search(limit=1000, now=NOW).items
    s.archive_settled()
    pages, cursor = [], 0
    while cursor is not None:
        page = s.search(limit=4, cursor=cursor, now=NOW)
        pages.extend(page.items)
        cursor = page.cursor
    assert pages == everything
    assert [p.id for p in s.search(state=State.PENDING, limit=10, now=NOW).items] == ["r1", "r3", "r5"]
    assert [p.id for p in s.search(prefix="r4", limit=10, now=NOW).items] == ["r4", "r4.0", "r4.1"]


def test_a_run_with_anything_pending_is_kept_whole(s: DirStore) -> None:
    run(s, "done")
    s.create([NewPromise("half", "wf", runnable=False)], NOW)
    s.create([NewPromise("half.0", "leaf", parent="half"), NewPromise("half.1", "leaf", parent="half",
                                                                       resolved=True)], NOW)
    s.settle("half", State.RESOLVED, 1, NOW)  # the root settled, one child still pending
    assert s.archive_settled() == 1
    assert {"half", "half.0", "half.1"} <= set(s.state.promises)
    assert "done" not in s.state.promises


def test_creating_an_archived_id_returns_what_is_stored(s: DirStore) -> None:
    run(s, "r")
    s.archive_settled()
    [again] = s.create([NewPromise("r", "other", ["new"])], NOW + 5)
    assert again.func == "wf" and again.state is State.RESOLVED
    assert "r" not in s.state.promises
    assert s.settle("r", State.REJECTED, "late", NOW + 5).state is State.RESOLVED


def test_gc_removes_whole_old_runs_and_nothing_else(s: DirStore, store_dir: Path) -> None:
    run(s, "old", at=NOW)
    run(s, "new", at=NOW + 100)
    run(s, "open", settle=False, at=NOW)
    assert s.gc(NOW + 50) == ["old"]
    for pid in ("old", "old.0", "old.2"):
        assert s.get(pid) is None
    assert s.get("new.1") is not None and s.get("open.0") is not None
    assert s.stats(now=NOW).by_state["resolved"] == 4 + 3
    assert s.gc(NOW + 50) == []
    with closing(DirStore(store_dir)) as fresh:
        assert fresh.get("old") is None and fresh.get("new") is not None


def test_compaction_archives_on_its_own(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "SEGMENT_BYTES", 4096)
    with closing(DirStore(store_dir)) as s:
        for i in range(60):
            run(s, f"r{i}")
        assert len(s.state.promises) < 60 * 4 / 2  # most of them moved out
        assert len(s.search(limit=1000).items) == 240
        assert s.state.archive_high > 0
    for path in store_dir.rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def _archived(store_dir: Path) -> Path:
    with closing(DirStore(store_dir)) as s:
        run(s, "a")
        s.archive_settled()
    return store_dir / "history" / "runs.db"


def test_a_missing_history_is_damage_not_absence(store_dir: Path) -> None:
    shutil.rmtree(_archived(store_dir).parent)
    with pytest.raises(CorruptStore, match="missing"):
        open_store(str(store_dir))


def test_an_older_copy_of_the_history_is_damage(store_dir: Path, tmp_path: Path) -> None:
    db = _archived(store_dir)
    with closing(DirStore(store_dir)) as s:
        s.archive_settled()  # nothing new: the copy is still current
    copy = tmp_path / "old"
    shutil.copytree(db.parent, copy)
    with closing(DirStore(store_dir)) as s:
        run(s, "b")
        s.archive_settled()
    shutil.rmtree(db.parent)
    shutil.copytree(copy, db.parent)
    with pytest.raises(CorruptStore, match="rows are missing"):
        open_store(str(store_dir))


def test_a_history_of_another_store_is_damage(store_dir: Path, tmp_path: Path) -> None:
    db = _archived(store_dir)
    elsewhere = _archived(tmp_path / "other")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    shutil.copy(elsewhere, db)
    with pytest.raises(CorruptStore, match="another store"):
        open_store(str(store_dir))


def test_garbage_in_the_history_is_damage(store_dir: Path) -> None:
    db = _archived(store_dir)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorruptStore, match="history database"):
        open_store(str(store_dir))


def test_a_pass_cut_short_before_its_frame_is_redone_without_double_counting(s: DirStore) -> None:
    run(s, "r")
    runs = s.state.complete_runs()
    s.archive.add(runs)  # the rows are in, the frame never written (the process died here)
    assert "r" in s.state.promises and s.get("r.1") is not None
    assert len(s.search(limit=100).items) == 4  # the held copies, once
    assert s.archive_settled() == 1
    assert "r" not in s.state.promises
    assert s.stats().by_state["resolved"] == 4
    assert [p.id for p in s.search(limit=100).items] == ["r", "r.0", "r.1", "r.2"]


def test_a_forked_child_closing_the_store_leaves_the_parents_history_alone(s: DirStore,
                                                                           store_dir: Path) -> None:
    run(s, "r")
    s.archive_settled()
    assert s.get("r.0") is not None  # the parent has the database open, in WAL mode
    wal = store_dir / "history" / "runs.db-wal"
    had_wal = wal.exists()
    pid = os.fork()
    if pid == 0:  # what a worker does with the supervisor's handle
        s.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert wal.exists() == had_wal
    run(s, "after")
    s.archive_settled()
    assert s.get("after.2") is not None and s.get("r.1") is not None


def test_a_failing_history_never_fails_the_change_that_set_off_compaction(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(replica, "SEGMENT_BYTES", 2048)

    def broken(self: object, runs: object) -> int:
        raise CorruptStore("runs.db", 0, "history database: disk image is malformed")

    monkeypatch.setattr(replica.Archive, "add", broken)
    with closing(DirStore(store_dir)) as s:
        for i in range(30):
            run(s, f"r{i}")  # each call returns: its change is durable whatever compaction met
        assert len(s.search(limit=1000).items) == 120
    assert "compacting store" in caplog.text and "malformed" in caplog.text
    with closing(DirStore(store_dir)) as fresh:
        assert len(fresh.search(limit=1000).items) == 120
