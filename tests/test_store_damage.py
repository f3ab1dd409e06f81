"""Damaged, foreign, read-only and full stores: each gives its documented error and loses nothing.

Damage is reported (CorruptStore, naming the file and byte offset) and the files are left
exactly as they were; only a torn tail, a write that was never acknowledged, is dropped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

import runner.store.log
import runner.store.replica
from runner.store import (
    CorruptStore,
    DirStore,
    NewPromise,
    NotSerializable,
    State,
    StoreFormatError,
    StoreFull,
    StoreIOError,
    StoreUnavailable,
    codec,
    normalize,
)
from runner.store.state import promise_to_list
from tests.helpers import run_cli

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
    {"format": "fanout-runner-store", "version": 3},
    {"format": "fanout-runner-store", "version": 1},  # before store ids and segment headers
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

    monkeypatch.setattr(runner.store.replica, "write_temp", full)
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


# -- the CLI on a store it must refuse ------------------------------------------------------


def cli_refuses(root: Path, *args: str, code: int = 3) -> str:
    """The real CLI exits `code` with one line on stderr, no traceback; returns that line."""
    done = run_cli(*(args or ("promises", "list")), "--store", str(root), timeout=30)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def unchanged(root: Path, *more: Path) -> Callable[[], None]:
    """A check that nothing under `root` (following nothing) nor any of `more` changed."""
    def snapshot() -> dict[str, Any]:
        files = {str(p): (p.is_symlink() and os.readlink(p)) or (p.is_file() and p.read_bytes())
                 for p in sorted(root.rglob("*"))}
        return {**files, **{str(m): m.read_bytes() if m.exists() else None for m in more}}
    before = snapshot()

    def check() -> None:
        assert snapshot() == before, "a refused store was changed"
    return check


def plant(link: Path, victim: Path, text: str | None) -> Path:
    """Replace `link` by a symbolic link to `victim` (given `text`, or left absent: dangling)."""
    if text is not None:
        victim.write_text(text)
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    return link


def other_store(tmp_path: Path, rotations: int = 0) -> Path:
    root = tmp_path / "other"
    with closing(DirStore(root)) as s:
        s.create([NewPromise("theirs", "leaf")], NOW)
        for i in range(rotations):
            rotate(s)
            s.create([NewPromise(f"theirs{i}", "leaf")], NOW)
    return root


# -- 1. a store knows what it is made of ---------------------------------------------------


def test_missing_first_segment_is_damage_not_an_empty_store(store_dir: Path) -> None:
    fill(store_dir)
    seg = store_dir / "log" / "00000001.seg"
    seg.unlink()
    same = unchanged(store_dir)
    line = cli_refuses(store_dir)
    assert str(seg) in line and "missing" in line
    same()


@pytest.mark.parametrize("target", ["empty", "other store"])
def test_log_replaced_by_a_symlink_is_refused(store_dir: Path, tmp_path: Path, target: str) -> None:
    fill(store_dir)
    shutil.rmtree(store_dir / "log")
    if target == "empty":
        elsewhere = tmp_path / "empty"
        elsewhere.mkdir()
    else:
        elsewhere = other_store(tmp_path) / "log"
    (store_dir / "log").symlink_to(elsewhere)
    same = unchanged(store_dir, *elsewhere.iterdir())
    line = cli_refuses(store_dir)
    assert str(store_dir / "log") in line and "symbolic link" in line
    same()


@pytest.mark.parametrize("segment", [1, 2])
def test_another_stores_segment_copied_in_is_damage(store_dir: Path, tmp_path: Path, segment: int) -> None:
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        rotate(s)
        s.create([NewPromise("later", "leaf")], NOW)
    theirs = other_store(tmp_path, rotations=1)
    name = f"{segment:08d}.seg"
    shutil.copy(theirs / "log" / name, store_dir / "log" / name)
    same = unchanged(store_dir)
    line = cli_refuses(store_dir)
    assert str(store_dir / "log" / name) in line and "another store" in line
    same()


def test_swapped_segments_are_damage(store_dir: Path) -> None:
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        for i in range(2):
            rotate(s)
            s.create([NewPromise(f"later{i}", "leaf")], NOW)
    log = store_dir / "log"
    (log / "00000002.seg").rename(log / "swap")
    (log / "00000003.seg").rename(log / "00000002.seg")
    (log / "swap").rename(log / "00000003.seg")
    err = refused(store_dir, CorruptStore)
    assert err.path == str(log / "00000002.seg") and "is segment 3" in str(err)


def test_segment_of_another_history_is_damage(store_dir: Path, tmp_path: Path) -> None:
    """A copy of this very store taken earlier, then diverged: its segment 2 follows another 1."""
    fill(store_dir, 3)
    twin = tmp_path / "twin"
    shutil.copytree(store_dir, twin)
    for root in (store_dir, twin):
        with closing(DirStore(root)) as s:
            s.create([NewPromise(f"only-in-{root.name}", "leaf")], NOW)
            rotate(s)
    shutil.copy(twin / "log" / "00000002.seg", store_dir / "log" / "00000002.seg")
    err = refused(store_dir, CorruptStore)
    assert err.path == str(store_dir / "log" / "00000002.seg") and "does not continue" in str(err)


def test_another_stores_snapshot_is_damage(store_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _compacted(store_dir, monkeypatch)
    theirs = _compacted(tmp_path / "theirs", monkeypatch) and tmp_path / "theirs"
    shutil.copy(theirs / "snapshot", store_dir / "snapshot")
    err = refused(store_dir, CorruptStore)
    assert err.path == str(store_dir / "snapshot") and "another store" in str(err)


# -- 2. torn tail or damage, from the frame's own header --------------------------------------


def test_torn_frame_whose_bytes_hold_a_whole_frame_is_a_torn_tail(store_dir: Path) -> None:
    before = fill(store_dir)
    inner = codec.frame(codec.pack([["s", "p0", "resolved", "forged", NOW]]))
    with closing(DirStore(store_dir)) as s:
        s.create([NewPromise("torn", "leaf", [inner + b"tail of the value"])], NOW)
    seg = store_dir / "log" / "00000001.seg"
    data = seg.read_bytes()
    os.truncate(seg, data.rindex(inner) + len(inner) + 1)  # cut one byte past the embedded frame
    with closing(DirStore(store_dir)) as s:
        assert dump(s)[0] == before[0]
        assert s.get("torn") is None and s.get("p0").state is State.PENDING  # type: ignore[union-attr]


def test_snapshot_damage_is_reported_at_its_real_offset(store_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _compacted(store_dir, monkeypatch)
    snap = store_dir / "snapshot"
    body_at = codec.read_frame(snap.read_bytes(), 0)[1]  # type: ignore[index]
    flip(snap, body_at + codec.HEADER.size + 10)
    err = refused(store_dir, CorruptStore)
    assert err.path == str(snap) and err.offset == body_at > 0 and "payload checksum" in str(err)


# -- 3. nothing outside the store is touched --------------------------------------------------


def test_segment_symlinked_to_an_unrelated_file_is_refused_and_the_file_untouched(
        store_dir: Path, tmp_path: Path) -> None:
    fill(store_dir)
    victim = tmp_path / "precious.txt"
    seg = plant(store_dir / "log" / "00000001.seg", victim, "not a segment")
    same = unchanged(store_dir, victim)
    line = cli_refuses(store_dir)
    assert str(seg) in line and "symbolic link" in line
    same()


@pytest.mark.parametrize("name", ["FORMAT", "snapshot"])
def test_format_or_snapshot_symlinked_elsewhere_is_refused(store_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _compacted(store_dir, monkeypatch)
    victim = tmp_path / "copy"
    shutil.copy(store_dir / name, victim)  # even a faithful copy: the store reads only its own files
    plant(store_dir / name, victim, None)
    same = unchanged(store_dir, victim)
    line = cli_refuses(store_dir)
    assert str(store_dir / name) in line and "symbolic link" in line
    same()


@pytest.mark.parametrize("name", ["lock", "supervisor.lock"])
@pytest.mark.parametrize("dangling", [False, True])
def test_lock_symlinks_are_refused_and_their_targets_untouched(
        store_dir: Path, tmp_path: Path, name: str, dangling: bool) -> None:
    fill(store_dir)
    victim = tmp_path / "victim"
    plant(store_dir / name, victim, None if dangling else "someone's file")
    same = unchanged(store_dir, victim)
    line = cli_refuses(store_dir, "start", "--workers", "1")
    assert str(store_dir / name) in line and "symbolic link" in line
    same()
    assert victim.exists() is not dangling  # a dangling link's target is never created


def test_planted_snapshot_temp_link_is_never_written_through(store_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    monkeypatch.setattr(runner.store.replica, "SEGMENT_BYTES", 1500)
    with closing(DirStore(store_dir)) as s:
        (store_dir / f".snapshot.{os.getpid()}.tmp").symlink_to(victim)
        for i in range(60):
            s.create([NewPromise(f"c{i}", "leaf", ["y" * 40])], NOW)
    assert (store_dir / "snapshot").exists() and victim.read_text() == "keep"


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_store_writable_by_others_is_refused(store_dir: Path, mode: int) -> None:
    fill(store_dir)
    os.chmod(store_dir, mode)
    same = unchanged(store_dir)
    line = cli_refuses(store_dir)
    assert "writable by group or others" in line and str(store_dir) in line
    same()
    assert store_dir.stat().st_mode & 0o777 == mode


def test_new_store_in_a_premade_world_writable_directory_is_refused(store_dir: Path) -> None:
    store_dir.mkdir()
    os.chmod(store_dir, 0o777)
    cli_refuses(store_dir)
    assert os.listdir(store_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_store_owned_by_another_user_is_refused_and_a_planted_link_not_followed(
        store_dir: Path, tmp_path: Path) -> None:
    """The campaign's case: root runs `status` on a world-writable store of another user."""
    fill(store_dir)
    victim = tmp_path / "root-owned"
    plant(store_dir / "log" / "00000002.seg", victim, "root's data")
    for path in [store_dir, *store_dir.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)
    os.chmod(store_dir, 0o777)
    same = unchanged(store_dir, victim)
    line = cli_refuses(store_dir, "status")
    assert "owned by uid 65534" in line
    same()
    os.chmod(store_dir, 0o700)
    assert "owned by uid 65534" in cli_refuses(store_dir, "status")


def test_an_empty_store_path_is_bad_input(tmp_path: Path) -> None:
    done = run_cli("promises", "list", "--store", "", cwd=tmp_path)
    assert done.returncode == 2 and "store path is empty" in done.stderr
    assert os.listdir(tmp_path) == []


# -- 4. content that cannot be applied is damage ---------------------------------------------


def append_raw(root: Path, payload: bytes) -> tuple[Path, int]:
    """Append a frame with a valid checksum around `payload`; returns the segment and its offset."""
    seg = sorted((root / "log").iterdir())[-1]
    offset = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(codec.frame(payload))
    return seg, offset


BAD_PAYLOADS = {
    "nested 100,000 deep": b"\x91" * 100_000 + b"\xc0",
    "nested past the limit": b"\x91" * (codec.FRAME_DEPTH + 1) + b"\xc0",
    "unknown extension": msgpack.packb([["s", "p0", "resolved", msgpack.ExtType(7, b"x"), NOW]]),
    "msgpack timestamp": msgpack.packb([["s", "p0", "resolved", msgpack.Timestamp(1, 0), NOW]]),
    "msgpack timestamp as ext 16": b"\x91\x95" + b"".join(map(msgpack.packb, ["s", "p0", "resolved"]))
    + b"\xc8\x00\x0c\xff" + bytes(12) + msgpack.packb(NOW),
    "payload not a list": msgpack.packb({"s": 1}),
    "op not a list": msgpack.packb(["s"]),
    "unknown op": msgpack.packb([["z", "p0"]]),
    "too few fields": msgpack.packb([["s", "p0"]]),
    "wrong type": msgpack.packb([["k", "p5", 17, 1, NOW, NOW]]),
    "settle of an unknown id": msgpack.packb([["s", "nobody", "resolved", 1, NOW]]),
    "claim of an unknown id": msgpack.packb([["k", "nobody", "w", 1, NOW, NOW]]),
    "release of an unknown id": msgpack.packb([["r", "nobody", 0.0, 1, None, None, NOW]]),
    "wait of an unknown id": msgpack.packb([["w", "nobody", ["p0"], None]]),
    "settle to pending": msgpack.packb([["s", "p5", "pending", 1, NOW]]),
    "create of a bad record": msgpack.packb([["c", ["x", "pending", "leaf"], True]]),
    "invalid UTF-8": b"\x91\x95\xa1s\xa2p0\xa8resolved\xa2\xff\xfe\xcb" + b"\x41" + b"\x00" * 7,
    "a list as a map key": b"\x91\x95\xa1s\xa2p0\xa8resolved\x81\x91\x01\x02\x01",
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_content_that_cannot_be_applied_is_damage(store_dir: Path, case: str) -> None:
    fill(store_dir)
    seg, offset = append_raw(store_dir, BAD_PAYLOADS[case])
    same = unchanged(store_dir)
    line = cli_refuses(store_dir)
    assert f"{seg} at byte {offset}" in line
    same()
    for args in (("status",), ("promises", "get", "p0"), ("tree", "p0")):
        assert f"at byte {offset}" in cli_refuses(store_dir, *args)


def test_a_live_handle_meeting_damage_serves_nothing_more(store_dir: Path) -> None:
    """Frames read while running are checked too; a half-applied frame leaves no usable state."""
    fill(store_dir)
    with closing(DirStore(store_dir)) as s:
        seg, offset = append_raw(store_dir, msgpack.packb([["s", "p2", "resolved", 1, NOW],
                                                           ["s", "nobody", "resolved", 1, NOW]]))
        for _ in range(2):
            with pytest.raises(CorruptStore) as info:
                s.get("p2")
            assert info.value.path == str(seg) and info.value.offset == offset


@pytest.mark.parametrize("body", [
    {"not": "a list"},
    [[["x", "pending"]], []],
    [[], [["ghost", ["ready", 0, 1, None, None, 0.0, [], None, None, 0.0, None]]]],
    [[["x", "pending", "leaf", [], None, {}, None, NOW, None, None, 0]], [["x", ["bogus"]]]],
])
def test_malformed_snapshot_body_is_damage(store_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           body: Any) -> None:
    _compacted(store_dir, monkeypatch)
    snap = store_dir / "snapshot"
    data = snap.read_bytes()
    body_at = codec.read_frame(data, 0)[1]  # type: ignore[index]
    snap.write_bytes(data[:body_at] + codec.frame(msgpack.packb(body)))
    same = unchanged(store_dir)
    line = cli_refuses(store_dir)
    assert f"{snap} at byte {body_at}" in line
    same()


def test_values_nested_past_the_limit_are_refused_before_anything_is_written(store_dir: Path) -> None:
    def nested(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        return value

    assert normalize(nested(codec.MAX_DEPTH)) == nested(codec.MAX_DEPTH)
    for bad in (nested(codec.MAX_DEPTH + 1), msgpack.Timestamp(1, 0)):
        with pytest.raises(NotSerializable):
            normalize(bad)
    fill(store_dir, 2)
    with closing(DirStore(store_dir)) as s:
        files = tree_bytes(store_dir)
        with pytest.raises(NotSerializable):
            s.create([NewPromise("deep", "leaf", [nested(codec.FRAME_DEPTH)])], NOW)
        assert tree_bytes(store_dir) == files


# -- 8. a read-only store can be inspected ---------------------------------------------------


def test_read_only_store_can_be_inspected_not_changed(tmp_path: Path) -> None:
    base = tmp_path / "rw"
    fill(base / "store")
    files = tree_bytes(base)
    with mounted(tmp_path / "ro", "--bind", str(base)) as target:
        mount("-o", "remount,bind,ro", str(target))
        store = target / "store"
        with closing(DirStore(store)) as s:
            assert s.get("p1").state is State.RESOLVED  # type: ignore[union-attr]
            with pytest.raises(StoreUnavailable, match="read-only"):
                s.settle("p5", State.RESOLVED, 1, NOW)
        for args in (("promises", "list"), ("promises", "get", "p1"), ("status",), ("tree", "p1")):
            done = run_cli(*args, "--store", str(store), timeout=30)
            assert done.returncode == 0, (args, done.stderr)
        assert "p1" in run_cli("promises", "list", "--store", str(store)).stdout
        assert "read-only" in cli_refuses(store, "promises", "resolve", "p5", "--value", "1")
        assert "Read-only" in cli_refuses(store, "start", "--workers", "1")
        with pytest.raises(StoreUnavailable, match=r"(?i)read-only"):
            DirStore(target / "new-store")  # cannot be created there
    assert tree_bytes(base) == files
