"""Wake-ups by LISTEN/NOTIFY: a connection of its own whose socket turns readable on a change.

A writer sends NOTIFY in the transaction of its change, so the wake-up is
delivered at the commit, never before the change can be read. Each topic has a
channel; a promise's settle goes out on one channel shared by every id, with the
id as payload, so a watcher of one id may wake for another's (spurious, allowed).

A lost connection (a partition, a server restart) is not the caller's error: the
watch wakes its caller once (what it missed must be read again), then offers a
descriptor that is never readable, so the caller sleeps to its own backstop, and
listens again on a new connection as soon as one can be made.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ..errors import StoreError
from ..types import settled_topic

_SETTLED = settled_topic("")
RECONNECT = 0.5  # seconds between attempts to listen again after the connection was lost


def route(schema: str, topic: str) -> tuple[str, str]:
    """(channel, payload) of a topic: settled:<id> goes out on one channel, the id as payload."""
    if topic.startswith(_SETTLED):
        return f"{schema}_settled", topic[len(_SETTLED):]
    return f"{schema}_{topic}", ""


class PgWatch:
    """Readable when something of its topics was committed (see the Watchable protocol)."""

    def __init__(self, connect: Callable[[], Any], release: Callable[[Any], None], schema: str,
                 topics: tuple[str, ...]) -> None:
        """`connect` opens an autocommit connection of its own, handed to `release` at close."""
        self._connect = connect
        self._conn: Any = connect()
        self._release = release
        self._schema = schema
        self._channels: set[str] = set()
        self._ids: set[str] = set()
        self._idle = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # offered while the connection is lost
        self._retry_at = 0.0
        self._woken = False  # the idle pipe holds its one byte
        for topic in topics:
            self.add(topic)

    def add(self, topic: str) -> None:
        channel, payload = route(self._schema, topic)
        if topic.startswith(_SETTLED):
            self._ids.add(payload)
        if channel not in self._channels:
            self._channels.add(channel)
            if self._conn is not None:
                self._listen(self._conn, [channel])

    @staticmethod
    def _listen(conn: Any, channels: list[str]) -> None:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def fileno(self) -> int:
        """The connection's socket; while the connection is lost, or just found again, a pipe
        of our own (readable once, to say everything must be read again)."""
        if self._conn is None:
            self._relisten()
        elif not self._woken:
            try:
                return int(self._conn.fileno())
            except psycopg.OperationalError:
                self._lost()
        return self._idle[0]

    def _lost(self, *, wake: bool = True) -> None:
        """The connection is gone: wake the caller once (unless it is told already), and
        listen again later."""
        self._release(self._conn)
        self._conn = None
        self._retry_at = time.monotonic() + RECONNECT
        if wake:
            self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            os.write(self._idle[1], b"!")

    def _relisten(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RECONNECT
        try:
            conn = self._connect()
        except StoreError:
            return
        try:
            self._listen(conn, sorted(self._channels))
        except psycopg.Error:
            self._release(conn)
            return
        self._conn = conn
        self._wake()  # what happened while we were away must be read again

    def drain(self) -> None:
        self._matched()

    def _matched(self) -> bool:
        """Consume what has arrived; whether any of it was of our topics."""
        matched = self._woken  # lost or found again: everything must be read again
        if self._woken:
            os.read(self._idle[0], 64)
            self._woken = False
        if self._conn is None:
            return matched
        try:
            for note in self._conn.notifies(timeout=0):
                if not note.channel.endswith("_settled") or note.payload in self._ids:
                    matched = True
        except psycopg.OperationalError:  # the server went away: the caller reads again
            self._lost(wake=False)
            return True
        return matched

    def wait(self, timeout: float | None) -> bool:
        """Block until a change of our topics or the timeout; True if something changed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = self.fileno()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if fd == self._idle[0]:  # lost: look again soon, to listen anew
                left = RECONNECT if left is None else min(left, RECONNECT)
            ready, _, _ = select.select([fd], [], [], left)
            if ready and self._matched():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        if self._conn is not None:
            self._release(self._conn)
            self._conn = None
        for fd in self._idle:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._idle = (-1, -1)
