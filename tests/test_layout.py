"""The package's rooms: the engine never imports the command line or the chaos harness,
the harness never imports the command line, and every module imports on its own.

Each check runs in a fresh interpreter, so an import cycle that only works in one order
(the order some other test happened to import things in) is still seen.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "runner"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(under: Path) -> list[str]:
    return sorted(module_name(p) for p in under.glob("*.py"))


def imported_after(module: str) -> set[str]:
    """The runner modules a fresh interpreter holds after importing `module` alone."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('runner')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)
    assert done.returncode == 0, f"importing {module} alone failed:\n{done.stderr}"
    return set(done.stdout.split())


@pytest.mark.parametrize("module", [m for m in modules(PACKAGE) if m != "runner.__main__"])
def test_the_engine_imports_neither_the_cli_nor_the_harness(module: str) -> None:
    loaded = imported_after(module)
    assert not {m for m in loaded if m.startswith(("runner.cli", "runner.chaos"))}, loaded


@pytest.mark.parametrize("module", modules(PACKAGE / "chaos"))
def test_the_harness_imports_no_cli(module: str) -> None:
    assert not {m for m in imported_after(module) if m.startswith("runner.cli")}


@pytest.mark.parametrize("module", modules(PACKAGE / "cli"))
def test_every_cli_module_imports_on_its_own_and_sees_every_command(module: str) -> None:
    """Importing any one module loads the package's __init__, which registers all commands."""
    loaded = imported_after(module)
    assert {"runner.cli.chaos", "runner.cli.promises", "runner.cli.overview", "runner.cli.run"} <= loaded
