"""Who holds a claim: an owner is "<pid>@<start time>", since a pid can be reused."""

from __future__ import annotations

import psutil


def owner_id(pid: int) -> str:
    """The owner name of a live process (the same whether it or its parent asks)."""
    return f"{pid}@{psutil.Process(pid).create_time():.2f}"


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
