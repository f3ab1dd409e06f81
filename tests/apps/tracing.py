"""A line per execution, so a test knows what ran where and when, whatever the store says."""

from __future__ import annotations

import json
import os
from typing import Any

from runner import current


def trace(path: str, **fields: Any) -> None:
    """Append one JSON line: O_APPEND and one write, so lines of several processes never interleave."""
    line = {"id": current().id, "attempt": current().attempt, "pid": os.getpid(), **fields}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
