"""Who holds a claim: an owner is "<pid>@<start time>", since a pid can be reused.

On a store shared by several supervisors (several hosts), a worker's owner id also
carries its supervisor's id, "<pid>@<start time>+<sid>": pids are only unique on one
host, and a supervisor declared dead gives back exactly the claims of its own workers.
"""

from __future__ import annotations

import psutil


def owner_id(pid: int, supervisor: str | None = None) -> str:
    """The owner name of a live process (the same whether it or its parent asks)."""
    owner = _process(pid, psutil.Process(pid).create_time())
    return owner if supervisor is None else f"{owner}+{supervisor}"


def _process(pid: int, started: float) -> str:
    return f"{pid}@{started:.2f}"


def is_owner(owner: str, pid: int, started: float) -> bool:
    """Whether `owner` names the process of this pid and start time (whatever supervisor it names)."""
    return owner.split("+", 1)[0] == _process(pid, started)


def owner_supervisor(owner: str | None) -> str | None:
    """The supervisor id an owner name carries, or None (a directory store's owners carry none)."""
    if owner is None or "+" not in owner:
        return None
    return owner.rsplit("+", 1)[1]


def owner_pid(owner: str | None) -> int | None:
    """The pid in an owner name, or None for no owner (or a name of another form)."""
    if owner is None:
        return None
    head = owner.split("@", 1)[0]
    return int(head) if head.isdigit() else None


def gone(pid: int) -> bool:
    """Whether the process is dead (a zombie counts: it runs no more code)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
