"""Damaged, foreign, read-only and full stores: each gives its documented error and loses nothing.

Damage is reported (CorruptStore, naming the file and byte offset) and the files are left
exactly as they were; only a torn tail, a write that was never acknowledged, is dropped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

import runner.store.log
import runner.store.replica
from runner.store import (
    CorruptStore,
    DirStore,
    NewPromise,
    State,
    StoreFormatError,
    StoreFull,
    StoreIOError,
    StoreUnavailable,
    codec,
)
from runner.store.state import promise_to_list

NOW = 1_000_000.0


# -- helpers -----------------------------------------------------------------------------


def dump(s: DirStore) -> tuple[dict[str, Any], dict[str, Any]]:
    st = s.state
    return ({pid: promise_to_list(p) for pid, p in st.promises.items()},
            {pid: t.to_list() for pid, t in st.tasks.items()})


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root with its content: to prove an operation wrote nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fill(root: Path, n: int = 10) -> dict[str, Any]:
    """A store with n promises written by n separate frames, some settled; returns its dump."""
    with closing(DirStore(root)) as s:
        for i in range(n):
            s.create([NewPromise(f"p{i}", "leaf", [i, "x" * 30])], NOW)
        s.settle("p1", State.RESOLVED, {"big": 2**70}, NOW)
        s.claim("w", NOW, limit=2)
        return dump(s)


def frame_offsets(path: Path) -> list[int]:
    return [offset for offset, _ in codec.frames(path.read_bytes())]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def rotate(s: DirStore) -> None:
    """Seal the current segment and go on in a new one, as compaction does (without a snapshot)."""
    with s._locked():
        s._log.rotate()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def refused(root: Path, error: type[Exception]) -> Any:
    """Opening root raises `error`, writes nothing, and leaks no descriptor."""
    before, fds = tree_bytes(root) if root.is_dir() else {}, open_fds()
    with pytest.raises(error) as info:
        DirStore(root)
    assert open_fds() == fds, "a refused open leaked a descriptor"
    if root.is_dir():
        assert tree_bytes(root) == before, "a refused open changed the files"
    return info.value


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(args)}): {done.stderr.strip() or done.returncode}")


@contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount(*args, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


# -- damaged records -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["magic", "length", "checksum", "payload"])
def test_flipped_byte_mid_segment_is_reported_with_file_and_offset(store_dir: Path, where: str) -> None:
    fill(store_dir)
    seg = store_dir / "log" / "00000001.seg"
    offsets = frame_offsets(seg)
    victim = offsets[len(offsets) // 2]
    flip(seg, victim + {"magic": 0, "length": 5, "checksum": 9, "payload": codec.HEADER.size + 4}[where])
    err = refused(store_dir, CorruptStore)
    assert err.path == str(seg) and err.offset == victim
    assert str(seg) in str(err) and f"byte {victim}" in str(err)


@pytest.mark.parametrize("cut", [3, codec.HEADER.size, codec.HEADER.size + 7, -1])
def test_torn_tail_is_dropped_and_everything_before_reads_back(store_dir: Path, cut: int) -> None:
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        before = dump(s)
        s.create([NewPromise("torn", "leaf", ["never acknowledged"])], NOW)
    seg = store_dir / "log" / "00000001.seg"
    last = frame_offsets(seg)[-1]
    size = seg.stat().st_size
    os.truncate(seg, last + cut if cut > 0 else size + cut)  # the crash cut the last write short
    with closing(DirStore(store_dir)) as s:
        assert dump(s) == before
        assert s.get("torn") is None
        assert seg.stat().st_size == last, "the torn tail was not cut off"
        s.create([NewPromise("torn", "leaf", ["redone"])], NOW)  # and the log goes on after it
    with closing(DirStore(store_dir)) as s:
        assert s.get("torn").args == ["redone"]  # type: ignore[union-attr]


def test_torn_frame_in_a_sealed_segment_is_damage(store_dir: Path) -> None:
    """Only the very end of the log can be torn: a cut segment with a later one is damage."""
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        rotate(s)
        s.create([NewPromise("later", "leaf")], NOW)
    seg1 = store_dir / "log" / "00000001.seg"
    last = frame_offsets(seg1)[-1]
    os.truncate(seg1, last + 4)
    err = refused(store_dir, CorruptStore)
    assert err.path == str(seg1) and err.offset == last


def test_damaged_last_frame_with_whole_frames_after_in_next_segment(store_dir: Path) -> None:
    """A bad frame at the end of a sealed segment is reported, not dropped as torn."""
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        rotate(s)
    seg1 = store_dir / "log" / "00000001.seg"
    last = frame_offsets(seg1)[-1]
    flip(seg1, last + codec.HEADER.size + 1)
    err = refused(store_dir, CorruptStore)
    assert err.path == str(seg1) and err.offset == last


def _compacted(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(runner.store.replica, "SEGMENT_BYTES", 1500)
    with closing(DirStore(store_dir)) as s:
        for i in range(60):
            s.create([NewPromise(f"c{i}", "leaf", ["y" * 40])], NOW)
        assert (store_dir / "snapshot").exists()
        return dump(s)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupted_snapshot_is_reported(store_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                        damage: str) -> None:
    before = _compacted(store_dir, monkeypatch)
    with closing(DirStore(store_dir)) as s:
        assert dump(s) == before
    snap = store_dir / "snapshot"
    if damage == "flip":
        flip(snap, snap.stat().st_size // 2)
    else:
        os.truncate(snap, snap.stat().st_size // 2 if damage == "truncate" else 0)
    err = refused(store_dir, CorruptStore)
    assert err.path == str(snap)


def test_missing_snapshot_is_reported(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _compacted(store_dir, monkeypatch)
    (store_dir / "snapshot").unlink()
    err = refused(store_dir, CorruptStore)
    assert "missing" in str(err) and err.path == str(store_dir / "snapshot")


def test_a_missing_log_directory_is_reported_not_read_as_an_empty_store(store_dir: Path) -> None:
    fill(store_dir)
    shutil.rmtree(store_dir / "log")
    err = refused(store_dir, CorruptStore)
    assert "missing" in str(err) and err.path == str(store_dir / "log")
    assert not (store_dir / "log").exists()  # nothing was made up in its place


def test_missing_segments_are_reported(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        for i in range(2):
            rotate(s)
            s.create([NewPromise(f"later{i}", "leaf")], NOW)
    (store_dir / "log" / "00000002.seg").unlink()  # a hole between segments 1 and 3
    err = refused(store_dir, CorruptStore)
    assert err.path == str(store_dir / "log" / "00000002.seg") and "missing" in str(err)


def test_missing_segment_the_snapshot_continues_in_is_reported(store_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _compacted(store_dir, monkeypatch)
    [seg] = (store_dir / "log").iterdir()
    seg.unlink()
    err = refused(store_dir, CorruptStore)
    assert err.path == str(seg)


# -- stores that are not ours, or not usable ------------------------------------------------


def test_directory_with_unrelated_files_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    err = refused(root, StoreFormatError)
    assert "notes.txt" in str(err)
    assert sorted(os.listdir(root)) == ["notes.txt"]


def test_leftover_temp_of_an_interrupted_creation_is_not_a_stranger(store_dir: Path) -> None:
    """A crash while FORMAT was being created leaves `.FORMAT.PID.tmp`: still an empty store."""
    store_dir.mkdir()
    (store_dir / ".FORMAT.4242.tmp").write_bytes(b"half")
    with closing(DirStore(store_dir)) as s:
        s.create([NewPromise("a", "leaf")], NOW)


def test_leftover_snapshot_temp_is_removed(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _compacted(store_dir, monkeypatch)
    (store_dir / ".snapshot.4242.tmp").write_bytes(b"a crash mid-compaction")
    with closing(DirStore(store_dir)) as s:
        assert dump(s) == before
    assert not (store_dir / ".snapshot.4242.tmp").exists()


@pytest.mark.parametrize("content", [
    {"format": "fanout-runner-store", "version": 2},
    {"format": "fanout-runner-store", "version": 0},
    {"format": "someone-else", "version": 1},
    None,
])
def test_other_format_is_refused(store_dir: Path, content: dict[str, Any] | None) -> None:
    fill(store_dir, 3)
    (store_dir / "FORMAT").write_bytes(b"\xc1garbage" if content is None else codec.pack(content))
    err = refused(store_dir, StoreFormatError)
    if content is not None and content["format"] == "fanout-runner-store":
        assert f"version {content['version']}" in str(err)


def test_store_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.write_text("a file")
    err = refused(path, StoreUnavailable)
    assert "not a directory" in str(err)
    assert path.read_text() == "a file"
    with pytest.raises(StoreUnavailable):
        DirStore(path / "below")


def test_read_only_store_is_refused_and_left_intact(tmp_path: Path) -> None:
    base = tmp_path / "rw"
    before = fill(base / "store")
    files = tree_bytes(base)
    target = tmp_path / "ro"
    target.mkdir()
    mount("--bind", str(base), str(target))
    try:
        mount("-o", "remount,bind,ro", str(target))
        err = refused(target / "store", StoreUnavailable)
        assert "not writable" in str(err)
        with pytest.raises(StoreUnavailable):
            DirStore(target / "new-store")  # cannot even be created
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
    assert tree_bytes(base) == files
    with closing(DirStore(base / "store")) as s:
        assert dump(s) == before


# -- a full disk, a failed sync ------------------------------------------------------------


def _ops(s: DirStore) -> dict[str, Any]:
    """One change of each kind, each to be tried on a failing disk and then redone."""
    counter = s.task("p0").counter  # type: ignore[union-attr]  # claimed by fill()
    return {
        "create": lambda: s.create([NewPromise(f"new{i}", "leaf", ["z" * 100]) for i in range(30)], NOW),
        "settle": lambda: s.settle("p5", State.REJECTED, {"type": "E"}, NOW),
        "claim": lambda: s.claim("w2", NOW, limit=3),
        "complete": lambda: s.complete("p0", counter, State.RESOLVED, [1, 2], NOW,
                                       creates=[NewPromise("p0.kid", "leaf", parent="p0")]),
    }


@pytest.mark.parametrize("op", ["create", "settle", "claim", "complete"])
@pytest.mark.parametrize("written", [0, 0.5])
def test_disk_full_changes_nothing_and_the_change_succeeds_later(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch, op: str, written: float) -> None:
    fill(store_dir)
    real_write_all = runner.store.log.write_all

    def full(fd: int, data: bytes) -> None:  # a full disk, after part of the frame went out
        real_write_all(fd, data[: int(len(data) * written)])
        raise OSError(errno.ENOSPC, "No space left on device")

    with closing(DirStore(store_dir)) as s:
        before, files = dump(s), tree_bytes(store_dir)
        change = _ops(s)[op]
        monkeypatch.setattr(runner.store.log, "write_all", full)
        with pytest.raises(StoreFull):
            change()
        assert dump(s) == before, "memory changed by a failed write"
        assert tree_bytes(store_dir) == files, "disk changed by a failed write"
        with closing(DirStore(store_dir)) as other:
            assert dump(other) == before
        monkeypatch.setattr(runner.store.log, "write_all", real_write_all)
        change()  # the fault is gone: the very same change succeeds
        after = dump(s)
        assert after != before
    with closing(DirStore(store_dir)) as s:
        assert dump(s) == after


def test_sync_failure_fails_the_change_and_leaves_no_readable_frame(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(store_dir)
    calls: list[int] = []

    def eio(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    with closing(DirStore(store_dir)) as s:
        before, files = dump(s), tree_bytes(store_dir)
        monkeypatch.setattr(os, "fdatasync", eio)
        with pytest.raises(StoreIOError) as info:
            s.settle("p5", State.RESOLVED, "maybe", NOW)
        assert not isinstance(info.value, StoreFull)
        assert len(calls) == 1, "a failed sync was retried"
        assert dump(s) == before
        assert tree_bytes(store_dir) == files, "the unsynced frame was left readable"
        monkeypatch.undo()
        with closing(DirStore(store_dir)) as other:
            assert other.get("p5").state is State.PENDING  # type: ignore[union-attr]
        assert s.settle("p5", State.RESOLVED, "surely", NOW).value == "surely"
    with closing(DirStore(store_dir)) as s:
        assert s.get("p5").value == "surely"  # type: ignore[union-attr]


def test_failed_snapshot_does_not_fail_a_durable_change(store_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The change that crossed the segment limit is durable already: it is reported done."""
    monkeypatch.setattr(runner.store.replica, "SEGMENT_BYTES", 1500)

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.store.replica, "write_replace", full)
    with closing(DirStore(store_dir)) as s:
        for i in range(60):
            s.create([NewPromise(f"c{i}", "leaf", ["y" * 40])], NOW)
        before = dump(s)
    assert not (store_dir / "snapshot").exists()
    monkeypatch.undo()
    with closing(DirStore(store_dir)) as s:
        assert dump(s) == before


def test_a_real_full_disk(tmp_path: Path) -> None:
    """A 64 KiB tmpfs filled for real: StoreFull, nothing stored is lost, and room lets it go on."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs") as mnt:
        root = mnt / "store"
        acked: list[str] = []
        with closing(DirStore(root)) as s:
            with pytest.raises(StoreFull):
                for i in range(10_000):
                    s.create([NewPromise(f"f{i}", "leaf", ["z" * 700])], NOW)
                    acked.append(f"f{i}")
            assert len(acked) > 10
            before, files = dump(s), tree_bytes(root)
            with pytest.raises(StoreFull):
                s.settle("f0", State.RESOLVED, "v" * 2000, NOW)
            assert dump(s) == before and tree_bytes(root) == files
        with closing(DirStore(root)) as s:
            assert dump(s) == before
            assert all(s.get(i) is not None for i in acked)
            mount("-o", "remount,size=1m", str(mnt))
            s.settle("f0", State.RESOLVED, "v" * 2000, NOW)
            s.create([NewPromise(f"f{len(acked)}", "leaf", ["z" * 700])], NOW)
        with closing(DirStore(root)) as s:
            assert s.get("f0").value == "v" * 2000  # type: ignore[union-attr]
            assert len(s.state.promises) == len(acked) + 1
