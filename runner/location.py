"""Where a store is: a directory, or a PostgreSQL URL; and where its local files go.

Commands, the Client and the supervisor pass a StoreLocation around instead of a
path. What really needs a directory (the effects journal) goes to `files`: the store's
own directory, or for a URL a directory of this machine's state dir named after
the database and schema ($XDG_STATE_HOME, else ~/.local/state, /fanout-runner/...).
Printed, a location never shows a password.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from runner.store import PromiseStore, StoreUnavailable, is_url, open_store, redact


class StoreLocation:
    """A store's place, as given by the user (`spec`, passed on to child processes as it is)."""

    def __init__(self, given: str | os.PathLike[str] | StoreLocation) -> None:
        self.spec: str = given.spec if isinstance(given, StoreLocation) else os.fspath(given)
        self.url = is_url(self.spec)

    def __str__(self) -> str:
        return redact(self.spec)

    def __repr__(self) -> str:
        return f"StoreLocation({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreLocation) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def files(self) -> Path:
        """The directory of this machine's files of the store (the effects journal); for a
        URL, made (mode 0700) if missing."""
        if not self.url:
            return Path(self.spec)
        shown = redact(self.spec)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", shown.split("://", 1)[1])[:60].strip("-")
        digest = hashlib.sha256(shown.encode()).hexdigest()[:10]
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        path = Path(state) / "fanout-runner" / f"{name}-{digest}"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def exists(self) -> bool:
        """Whether there is a store to look at (a database is found when connecting to it)."""
        return self.url or Path(self.spec).is_dir()

    def open(self, **options: Any) -> PromiseStore:
        return open_store(self.spec, **options)

    def history_dir(self) -> str:
        """The directory whose log a History follows; a URL's store keeps no log to follow."""
        if self.url:
            raise StoreUnavailable(f"the PostgreSQL store {self} keeps no log of executions: "
                                   "history (and runner chaos's verdict) needs a directory store")
        return self.spec


Where = str | os.PathLike[str] | StoreLocation  # what a Client or LocalSupervisor is given
