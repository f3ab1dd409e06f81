"""The examples check their own results; `make test` runs them so they never rot."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import cli_env


def test_every_example_passes_its_own_check() -> None:
    done = subprocess.run([sys.executable, "-m", "examples"], env=cli_env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) >= 5 and all(line.startswith("PASS") for line in lines), done.stdout
