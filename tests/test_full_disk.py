"""A full disk is calm: said once per restart at a growing pause, waited out, then work goes on.

The store lives on a tmpfs of its own, mounted for the test (root only; skipped
elsewhere), and a filler file takes every byte left on it.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_support import Workspace, result_of
from tests.helpers import wait_until

FILLER = "filler"


@pytest.fixture
def small_disk(ws: Workspace) -> Iterator[Workspace]:
    """The workspace with its store directory on a 4 MiB filesystem."""
    ws.store_dir.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(ws.store_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield ws
    finally:
        ws.close()
        subprocess.run(["umount", "-l", str(ws.store_dir)], check=False)


def fill(directory: Path) -> None:
    """Write until the filesystem has no byte left."""
    fd = os.open(directory / FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_supervisor_waits_out_a_full_disk_and_goes_on(small_disk: Workspace) -> None:
    ws = small_disk
    ws.start()
    # 400 naps of 0.1 s on 16 slots: completions keep coming for a few seconds, more of them
    # than fit in the slack of the log's last page.
    started = ws.cli("invoke", "naps", "--no-wait", "--id", "full", "--arg", "400", "--arg", "0.1")
    assert started.returncode == 0, started.stderr
    wait_until(lambda: len(ws.store.children("full")) == 400, timeout=20, message="children never spawned")
    fill(ws.store_dir)  # the branches finish into a full disk
    wait_until(lambda: ws.stderr("supervisor").count("could not write the store") >= 2, timeout=30,
               message=lambda: f"workers never reported the full disk: {ws.stderr('supervisor')}")
    # Claims taken after a restart would also fail: the disk is full for a while, and no
    # worker is lost in a loop meanwhile.
    said = ws.stderr("supervisor")
    (ws.store_dir / FILLER).unlink()
    done = ws.invoke("naps", 400, 0.1, promise_id="full", timeout=60)
    assert done.returncode == 0 and result_of(done) == 400, done.stderr
    log = ws.stderr("supervisor")
    assert "Traceback" not in log, log
    assert said.count("could not write the store") <= 8, said  # paced, not a crash loop
    assert "the disk is full" in said


def test_embedded_invoke_on_a_full_disk_exits_3_with_one_line(small_disk: Workspace) -> None:
    ws = small_disk
    started = ws.cli("invoke", "naps", "--no-wait", "--id", "stuck", "--arg", "400", "--arg", "0")
    assert started.returncode == 0, started.stderr
    fill(ws.store_dir)  # the 400 children cannot be written
    done = ws.invoke("naps", 400, 0, promise_id="stuck", timeout=60)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "the disk is full" in lines[0] and "kept" in lines[0], done.stderr
    (ws.store_dir / FILLER).unlink()
    again = ws.invoke("naps", 400, 0, promise_id="stuck", timeout=60)
    assert again.returncode == 0 and result_of(again) == 400, again.stderr  # nothing stored before was harmed
