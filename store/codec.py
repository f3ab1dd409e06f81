"""Bytes on disk: msgpack values inside checksummed frames.

A frame is `magic | version | length | crc32 | payload`. The checksum is what
tells a torn, never-acknowledged tail from a whole record, so it covers the
payload and the length both. Nothing here can execute code: msgpack only, with
one extension type for integers wider than 64 bits.
"""

from __future__ import annotations

import contextlib
import gc
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack

from .errors import NotSerializable

MAGIC = b"RN"
FORMAT_VERSION = 1
HEADER = struct.Struct(">2sBxII")  # magic, version, pad, payload length, crc32
MAX_FRAME = 1 << 30
_BIGINT = 1


def _default(obj: Any) -> Any:
    if isinstance(obj, int):  # only reached for ints msgpack cannot hold in 64 bits
        size = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_BIGINT, obj.to_bytes(size, "big", signed=True))
    raise NotSerializable(f"cannot store a value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _BIGINT:
        return int.from_bytes(data, "big", signed=True)
    raise ValueError(f"unknown msgpack extension type {code}")


def pack(value: Any) -> bytes:
    """Serialise a JSON-like value; anything else raises NotSerializable."""
    try:
        return msgpack.packb(value, default=_default, use_bin_type=True)
    except NotSerializable:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(f"cannot store value: {exc}") from None


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


def normalize(value: Any) -> Any:
    """The value as every reader of the store will see it (tuples become lists, and so on).

    Raises NotSerializable for what cannot be stored or would not read back.
    """
    return normalize_packed(value)[0]


def normalize_packed(value: Any) -> tuple[Any, bytes]:
    """`normalize(value)` and the bytes the store holds for it.

    Packing is idempotent over normalization (a tuple packs as the list it reads back
    as), so two values are the same stored value exactly when these bytes are equal:
    NaN is NaN, and True is not 1.
    """
    try:
        packed = pack(value)
        return unpack(packed), packed
    except NotSerializable:
        raise
    except Exception as exc:  # packs, but does not read back (a dict with a tuple key)
        raise NotSerializable(f"cannot store value: it would not read back ({exc})") from None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a whole state is built or taken apart.

    Loading 100,000 promises creates about a million containers that all live on, and
    the collector would walk them again and again: 1.1 s of a 2.7 s open. Nothing
    built here forms a cycle, so it has nothing to find. On the way out, freeze +
    unfreeze moves what survived straight into the oldest generation (a list splice),
    so the first collections after the pause do not walk it all again either; skipped
    if the program froze objects of its own. Usable as a decorator.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def crc(length: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "big")))


def frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), crc(len(payload), payload)) + payload


def read_frame(buf: bytes | memoryview, offset: int) -> tuple[bytes, int] | None:
    """The payload at `offset` and the offset after it, or None if no whole frame is there."""
    end = offset + HEADER.size
    if end > len(buf):
        return None
    magic, version, length, checksum = HEADER.unpack_from(buf, offset)
    if magic != MAGIC or version != FORMAT_VERSION or length > MAX_FRAME:
        return None
    if end + length > len(buf):
        return None
    payload = bytes(buf[end : end + length])
    if crc(length, payload) != checksum:
        return None
    return payload, end + length


def frames(buf: bytes | memoryview, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, payload) of consecutive whole frames; stop at the first bad one."""
    while (found := read_frame(buf, offset)) is not None:
        yield offset, found[0]
        offset = found[1]


def whole_frame_after(buf: bytes | memoryview, offset: int) -> int | None:
    """Offset of a whole frame anywhere after `offset`, if one exists.

    A bad frame followed by a good one is damage, not a torn tail: a torn write
    can only be the last thing in the log.
    """
    pos = offset + 1
    data = bytes(buf)
    while (pos := data.find(MAGIC, pos)) != -1:
        if read_frame(data, pos) is not None:
            return pos
        pos += 1
    return None
