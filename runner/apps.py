"""Import the user's app modules, so their `@function`s are registered by name.

Every process that runs functions (supervisor, workers, an embedded `invoke`) loads the
same list, found the same way, so a name recorded in the store resolves to the same
code wherever it is claimed.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from runner.errors import AppError

ENV_VAR = "RUNNER_APP"
_OURS = Path(__file__).resolve().parent
log = logging.getLogger(__name__)


def load_apps(modules: Sequence[str] = (), cwd: Path | None = None) -> list[str]:
    """Import the app modules and return their names.

    The list comes from `modules` if given, else from $RUNNER_APP (comma-separated),
    else from `[tool.runner] app` in the working directory's pyproject.toml.
    """
    root = (cwd or Path.cwd()).resolve()
    names = list(modules) or _split(os.environ.get(ENV_VAR, "")) or _from_pyproject(root)
    # The working directory goes first, as `python -m` would put it: an app module
    # living beside pyproject.toml must be importable however the runner was started.
    entry = str(root)
    while entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    # A module file written after the import system last listed its directory (a test,
    # a freshly scaffolded project) would otherwise be missed.
    importlib.invalidate_caches()
    _warn_if_shadowed(root)
    for name in names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as error:  # a module calling sys.exit() at import, too
            cause = " ".join(f"{type(error).__name__}: {error}".split())
            raise AppError(f"cannot load app module {name!r}: {cause}", module=name) from error
    return names


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _from_pyproject(root: Path) -> list[str]:
    path = root / "pyproject.toml"
    try:
        with path.open("rb") as file:
            config = tomllib.load(file)
    except FileNotFoundError:
        return []
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise AppError(f"cannot read {path}: {error}") from error
    app = config.get("tool", {}).get("runner", {}).get("app", [])
    if isinstance(app, str):
        app = [app]
    if not isinstance(app, list) or not all(isinstance(name, str) and name for name in app):
        raise AppError(f"{path}: [tool.runner] app must be a list of module names, got {app!r}")
    return app


def _warn_if_shadowed(root: Path) -> None:
    """Say so when the project has a `runner` module of its own: ours is imported already.

    The command itself is this package, so `import runner` in the user's app finds
    ours, never theirs; nothing can make both importable under one name.
    """
    for candidate in (root / "runner.py", root / "runner" / "__init__.py"):
        if candidate.exists() and candidate.resolve().parent != _OURS:
            log.warning("%s is shadowed: 'import runner' gives fanout-runner's package here; "
                        "rename your module", candidate)
