"""Power-loss tests: what survives is only what some process synced.

Each child runs with os.fsync and os.fdatasync wrapped: after each real sync it appends
to a side file what the kernel now holds on disk for that inode (a file's bytes, or a
directory's names). A power cut is then simulated by rebuilding the tree from those
records alone, starting at a base directory taken as durable: a name survives only if
its directory was synced with it, a file keeps only the bytes of its last sync. Remove
a sync from the store and these tests fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from runner.store import DirStore, State
from tests.helpers import Spawn

NOW = 1_000_000.0

# Installs the recording wrappers, then creates x and prints the id the store answers.
CHILD = r"""
import json, os, stat, sys
spec = json.loads(sys.argv[1])
record = os.open(spec["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

def remember(fd):
    st = os.fstat(fd)
    proc = f"/proc/self/fd/{fd}"
    if stat.S_ISDIR(st.st_mode):
        names = {n: os.lstat(os.path.join(proc, n)).st_ino for n in os.listdir(proc)}
        line = {"ino": st.st_ino, "dir": names}
    else:
        with open(proc, "rb") as f:
            line = {"ino": st.st_ino, "data": f.read().hex()}
    os.write(record, (json.dumps(line) + "\n").encode())

def wrap(real):
    def synced(fd):
        real(fd)
        remember(fd)
    return synced

os.fsync, os.fdatasync = wrap(os.fsync), wrap(os.fdatasync)
from runner.store import DirStore, NewPromise, State
s = DirStore(spec["store"], lease=30.0)
print(s.create([NewPromise("x", "leaf", [1])], spec["now"])[0].id, flush=True)
"""


def run_child(processes: Spawn, spec: dict[str, Any], crash_at: str | None = None) -> str:
    proc = processes([sys.executable, "-c", CHILD, json.dumps(spec)],
                     env={"RUNNER_STORE_CRASH_AT": crash_at},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if crash_at else 0), err
    return str(out)


def power_cut(base: Path, record: Path, into: Path) -> None:
    """Rebuild under `into` what a disk holding only the recorded syncs would show."""
    synced: dict[int, Any] = {}
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        synced[entry["ino"]] = entry.get("dir", entry.get("data"))
    _rebuild(base, synced, into)


def _rebuild(src: Path, synced: dict[int, Any], dst: Path) -> None:
    dst.mkdir()
    names = synced.get(os.lstat(src).st_ino, {})
    for name, ino in names.items():
        path = src / name
        if not path.exists() or os.lstat(path).st_ino != ino:
            continue  # gone or replaced since: its own later sync of the directory decides
        if path.is_dir():
            _rebuild(path, synced, dst / name)
        else:
            (dst / name).write_bytes(bytes.fromhex(synced.get(ino, "")))


def test_a_frame_read_from_a_writer_killed_before_its_sync_is_synced_by_the_reader(
        tmp_path: Path, processes: Spawn) -> None:
    base, record = tmp_path / "base", tmp_path / "syncs.jsonl"
    base.mkdir()
    spec = {"store": str(base / "store"), "record": str(record), "now": NOW}
    DirStore(spec["store"]).close()  # an empty store, created before recording starts
    record.write_text(_tree_record(base))
    run_child(processes, spec, crash_at="append.before_sync")  # x is in the page cache only
    assert run_child(processes, spec).split() == ["x"]  # B answers "x exists" from A's frame
    power_cut(base, record, tmp_path / "after")
    with closing(DirStore(tmp_path / "after" / "store")) as s:
        stored = s.get("x")
    assert stored is not None and stored.state is State.PENDING


def test_a_store_in_new_parent_folders_survives_a_power_cut(tmp_path: Path, processes: Spawn) -> None:
    base, record = tmp_path / "base", tmp_path / "syncs.jsonl"
    base.mkdir()
    record.write_text(_tree_record(base))
    store = base / "a" / "b" / "store"
    run_child(processes, {"store": str(store), "record": str(record), "now": NOW})
    assert (store.parent.stat().st_mode & 0o777) == 0o700
    power_cut(base, record, tmp_path / "after")
    with closing(DirStore(tmp_path / "after" / "a" / "b" / "store")) as s:
        assert s.get("x") is not None


def _tree_record(root: Path) -> str:
    """Record lines for a tree made before recording started, as if all of it were synced."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        names = {n: os.lstat(here / n).st_ino for n in dirnames + filenames}
        lines.append({"ino": os.lstat(here).st_ino, "dir": names})
        for name in filenames:
            lines.append({"ino": os.lstat(here / name).st_ino, "data": (here / name).read_bytes().hex()})
    return "".join(json.dumps(line) + "\n" for line in lines)
