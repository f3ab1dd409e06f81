"""The partition tests' TCP proxy: it forwards, cuts both ends, refuses while cut, heals."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.netproxy import LinkProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A loopback echo server, one thread per connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()
    listener.close()


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


def test_forwards_until_cut_then_refuses_until_healed(echo: tuple[str, int]) -> None:
    with LinkProxy(echo) as proxy:
        assert _roundtrip(proxy.port, b"x" * 100_000) == b"x" * 100_000
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"ping")
        assert held.recv(4) == b"ping"
        assert proxy.connections() == 1

        proxy.cut()
        assert held.recv(4) == b""  # the open connection was closed under it
        held.close()
        assert _roundtrip(proxy.port, b"again") == b""  # refused while cut
        assert proxy.refused == 1

        proxy.heal()
        assert _roundtrip(proxy.port, b"healed") == b"healed"
        assert [kind for kind, _ in proxy.events] == ["cut", "heal"]


def test_url_points_at_the_proxy() -> None:
    with LinkProxy(("127.0.0.1", 9)) as proxy:
        assert proxy.url("postgresql://root@127.0.0.1:5432/test?schema=s") == \
            f"postgresql://root@127.0.0.1:{proxy.port}/test?schema=s"
        assert proxy.url("postgresql://localhost/db") == f"postgresql://127.0.0.1:{proxy.port}/db"


def test_a_blackhole_holds_the_bytes_until_the_link_heals(echo: tuple[str, int]) -> None:
    with LinkProxy(echo) as proxy:
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"one")
        assert held.recv(3) == b"one"

        proxy.blackhole()
        held.sendall(b"two")
        held.settimeout(0.5)
        with pytest.raises(TimeoutError):
            held.recv(3)  # nothing comes back while blackholed, and nothing is closed
        proxy.heal()
        held.settimeout(5)
        assert held.recv(3) == b"two"  # the held bytes land late
        held.close()
        assert [kind for kind, _ in proxy.events] == ["blackhole", "heal"]
