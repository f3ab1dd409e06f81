"""Our packages never shadow a user's modules: the store installs as `runner.store`.

The user projects here run without the repository on PYTHONPATH, as an installed
package would: only the project's own folder and what pip installed are importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHOP = '''
from runner import function
import store

@function
def count(item):
    return store.INVENTORY[item]
'''


def _user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUNNER_STORE", "RUNNER_APP")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# The installed console script, as a user runs it: `python -m runner` from a folder
# holding a runner.py would run that file instead.
RUNNER = str(Path(sys.executable).with_name("runner"))


def _run(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=project, env=_user_env(), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    project = tmp_path / "shop"
    project.mkdir()
    (project / "store.py").write_text('INVENTORY = {"apple": 3}\n')
    (project / "shop.py").write_text(SHOP)
    return project


def test_a_users_store_module_is_theirs_on_the_command_line(shop: Path) -> None:
    done = _run(shop, RUNNER, "invoke", "count", "--app", "shop", "--json", "--arg", '"apple"',
                "--store", str(shop / ".runner"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_a_users_store_module_is_theirs_from_python(shop: Path) -> None:
    script = (
        "import shop, store, runner, runner.store\n"
        "assert store.INVENTORY == {'apple': 3}, store\n"
        "assert runner.store is not store and hasattr(runner.store, 'open_store')\n"
        "print(shop.count('apple'))\n"
    )
    done = _run(shop, sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_a_users_runner_module_is_named_in_a_warning(shop: Path) -> None:
    """The command is our `runner` package, so theirs cannot be imported under that name:
    the run still works for an app that does not need it, and the user is told why
    `import runner` does not find theirs."""
    (shop / "runner.py").write_text("MINE = True\n")
    done = _run(shop, RUNNER, "invoke", "count", "--app", "shop", "--json", "--arg", '"apple"',
                "--store", str(shop / ".runner"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    assert f"{shop / 'runner.py'} is shadowed" in done.stderr
