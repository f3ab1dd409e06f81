"""A TCP forwarder on loopback whose link a test cuts and restores: a network partition.

One process (a supervisor and its workers) reaches the database through it; `cut()`
closes every connection it carries, both ends, and refuses new ones until `heal()`:
what a partition looks like to both sides once their TCP gives up (the server ends
the sessions, their advisory locks with them; the client's calls fail at once).
`blackhole()` is the nastier partition: connections stay open and nothing moves,
each side waiting on the other, until `heal()` lets the held bytes through (new
connections wait too), so a call cut off mid-flight lands late.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

CHUNK = 1 << 16


class LinkProxy:
    """Forwards 127.0.0.1:`port` to `target` while the link is up."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # both ends of every forwarded connection
        self._up = True
        self._flowing = threading.Event()  # cleared while blackholed
        self._flowing.set()
        self._closed = False
        self.events: list[tuple[str, float]] = []  # ("cut" | "heal", time.time())
        self.refused = 0  # connections turned away while cut
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepter.start()

    def url(self, base: str) -> str:
        """`base` (postgresql://user@host:port/db...) pointed at this proxy instead."""
        head, _, rest = base.partition("://")
        netloc, slash, tail = rest.partition("/")
        user, at, _hostport = netloc.rpartition("@")
        return f"{head}://{user}{at}127.0.0.1:{self.port}{slash}{tail}"

    def cut(self) -> None:
        """Drop every connection through us and refuse new ones."""
        with self._lock:
            self._up = False
            self.events.append(("cut", time.time()))
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)

    def blackhole(self) -> None:
        """Stop every byte, both ways, on every connection (and new ones), closing none."""
        with self._lock:
            self._flowing.clear()
            self.events.append(("blackhole", time.time()))

    def heal(self) -> None:
        with self._lock:
            self._up = True
            self._flowing.set()
            self.events.append(("heal", time.time()))

    def connections(self) -> int:
        """How many connections are being forwarded now (each counts once)."""
        with self._lock:
            return len(self._open) // 2

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(timeout=5)

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        self._flowing.wait()  # blackholed: the connection is accepted, and waits
        with self._lock:
            up = self._up and not self._closed
        if not up:
            self.refused += 1
            _close(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
            server.settimeout(None)
        except OSError:
            _close(client)
            return
        with self._lock:
            if not self._up:  # cut while we connected
                _close(client)
                _close(server)
                return
            self._open |= {client, server}
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy one direction until either end closes; then close both."""
        try:
            while data := src.recv(CHUNK):
                self._flowing.wait()  # blackholed: held here (the kernel's buffers fill, then stall)
                dst.sendall(data)
        except OSError:
            pass
        self._flowing.wait()  # an end blackholed is held too: the other side learns of it at the heal
        with self._lock:
            self._open -= {src, dst}
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
