"""What a merge can leave behind unseen: conflict markers in a file nobody runs (the README)."""

from __future__ import annotations

import subprocess

from tests.helpers import REPO_ROOT

MARKERS = ("<<<<<<< ", ">>>>>>> ")


def test_no_tracked_file_holds_merge_conflict_markers() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    found = []
    for name in tracked.stdout.split():
        path = REPO_ROOT / name
        if path.is_symlink() or not path.is_file() or path.suffix not in {".py", ".md", ".toml", ".cfg", ""}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith(MARKERS):
                found.append(f"{name}:{number}")
    assert found == []
