"""Wake-ups by LISTEN/NOTIFY: a connection of its own whose socket turns readable on a change.

A writer sends NOTIFY in the transaction of its change, so the wake-up is
delivered at the commit, never before the change can be read. Each topic has a
channel; a promise's settle goes out on one channel shared by every id, with the
id as payload, so a watcher of one id may wake for another's (spurious, allowed).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ..types import settled_topic

_SETTLED = settled_topic("")


def route(schema: str, topic: str) -> tuple[str, str]:
    """(channel, payload) of a topic: settled:<id> goes out on one channel, the id as payload."""
    if topic.startswith(_SETTLED):
        return f"{schema}_settled", topic[len(_SETTLED):]
    return f"{schema}_{topic}", ""


class PgWatch:
    """Readable when something of its topics was committed (see the Watchable protocol)."""

    def __init__(self, conn: Any, release: Callable[[Any], None], schema: str,
                 topics: tuple[str, ...]) -> None:
        """`conn`: an autocommit connection of its own, handed to `release` at close."""
        self._conn: Any = conn
        self._release = release
        self._schema = schema
        self._channels: set[str] = set()
        self._ids: set[str] = set()
        for topic in topics:
            self.add(topic)

    def add(self, topic: str) -> None:
        channel, payload = route(self._schema, topic)
        if topic.startswith(_SETTLED):
            self._ids.add(payload)
        if channel not in self._channels:
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._channels.add(channel)

    def fileno(self) -> int:
        return int(self._conn.fileno())

    def drain(self) -> None:
        self._matched()

    def _matched(self) -> bool:
        """Consume what has arrived; whether any of it was of our topics."""
        matched = False
        try:
            for note in self._conn.notifies(timeout=0):
                if not note.channel.endswith("_settled") or note.payload in self._ids:
                    matched = True
        except psycopg.OperationalError:  # the server went away: wake, the caller reads again
            return True
        return matched

    def wait(self, timeout: float | None) -> bool:
        """Block until a change of our topics or the timeout; True if something changed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fileno()], [], [], left)
            if ready and self._matched():
                return True
            if not ready and left is not None:
                return False

    def close(self) -> None:
        if self._conn is not None:
            self._release(self._conn)
            self._conn = None
