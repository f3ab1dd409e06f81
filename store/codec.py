"""Bytes on disk: msgpack values inside checksummed frames.

A frame is `magic | version | length | crc32(payload) | crc32(header) | payload`.
The header has a checksum of its own, so its declared length can be trusted: a
frame whose header is whole and whose declared end lies past the end of the file
is a torn, never-acknowledged tail; anything else that does not read is damage.
Nothing here can execute code: msgpack only, with one extension type (integers
wider than 64 bits), and values nested at most MAX_DEPTH deep.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import re
import struct
import zlib
from collections.abc import Iterator
from itertools import chain, compress, repeat
from typing import Any

import msgpack

from .errors import NotSerializable

MAGIC = b"RN"
FORMAT_VERSION = 2  # 2: the header carries its own checksum
HEADER = struct.Struct(">2sBxIII")  # magic, version, pad, payload length, crc32 of payload, of header
_CHECKED = struct.Struct(">2sBxII")  # the part of the header its own checksum covers
MAX_FRAME = 1 << 30
MAX_DEPTH = 200  # nesting of a stored value (a list in a list ... counts each level)
# What the store wraps around a value in a frame (the op list, the promise record, ...):
# a frame may nest this much deeper than the values in it.
FRAME_DEPTH = MAX_DEPTH + 8
_BIGINT = 1


class Undecodable(ValueError):
    """Bytes that are not a value this codec writes: bad msgpack, too deep, a foreign type."""


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


def unpack(data: bytes, depth: int | None = FRAME_DEPTH) -> Any:
    """The value packed in `data`; Undecodable for anything pack() would not have written.

    depth=None leaves the nesting and msgpack's own types to the caller, which knows
    the value's layout and checks only the parts that can nest (check_nested): a
    snapshot's fixed fields are a million items not worth walking at every open.
    """
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    except Exception as exc:  # msgpack raises many kinds: bad UTF-8, a list as a key, extra data
        raise Undecodable(f"undecodable value ({type(exc).__name__}: {exc})") from None
    if depth is not None and (_containers_at_most(data) > depth or _TIMESTAMPS.search(data)):
        check_nested(value, depth)
    return value


# Container headers in msgpack: fixmap, fixarray, array 16/32, map 16/32. Every other byte
# value is deleted to count them; stray ones inside strings only make the count larger.
_NOT_CONTAINER = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))
# msgpack reads any extension of type -1 holding 4, 8 or 12 bytes as a Timestamp, in each
# of the ext encodings: fixext 4/8, ext 8, ext 16, ext 32.
_TIMESTAMPS = re.compile(rb"[\xd6\xd7]\xff|\xc7[\x04\x08\x0c]\xff|\xc8\x00[\x04\x08\x0c]\xff"
                         rb"|\xc9\x00\x00\x00[\x04\x08\x0c]\xff")


def _containers_at_most(data: bytes) -> int:
    """An upper bound on the containers in `data`, and so on its nesting: a fast pre-check.

    Most frames are a few hundred bytes with a handful of containers; the exact walk
    would cost a write more than its checksum does.
    """
    return len(data.translate(None, _NOT_CONTAINER))


def check_nested(value: Any, limit: int) -> None:
    """Refuse values nested deeper than `limit` and msgpack's own types.

    msgpack decodes its timestamp extension (-1) itself, without calling _ext_hook,
    so a Timestamp can only be found here. Walked one level at a time, without
    recursion (a deep value must not blow Python's stack in the very check that
    refuses it), and with iterator functions that run in C: a snapshot holds
    millions of items, walked at every open.
    """
    level = [value]
    depth = 1
    while True:
        kinds = list(map(type, level))
        dicts = list(compress(level, map(operator.is_, kinds, repeat(dict))))
        if msgpack.Timestamp in kinds or msgpack.Timestamp in map(type, chain.from_iterable(dicts)):
            raise Undecodable("msgpack timestamp extension (-1) is not a stored type")
        lists = compress(level, map(operator.is_, kinds, repeat(list)))
        items = list(chain(chain.from_iterable(lists), chain.from_iterable(map(dict.values, dicts))))
        level = list(compress(items, map(_WALKED.__contains__, map(type, items))))
        if not level:
            return
        depth += 1
        if depth > limit:
            raise Undecodable(f"value nested deeper than {limit} levels")


_WALKED = {list, dict, msgpack.Timestamp}


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
        return unpack(packed, MAX_DEPTH), packed
    except Undecodable as exc:  # packs, but does not read back (a dict with a tuple key, too deep)
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
    checked = _CHECKED.pack(MAGIC, FORMAT_VERSION, len(payload), crc(len(payload), payload))
    return checked + zlib.crc32(checked).to_bytes(4, "big") + payload


def _header(buf: bytes | memoryview, offset: int) -> tuple[int, int] | None:
    """(payload length, payload crc) of a whole, self-consistent header at `offset`, else None."""
    if offset + HEADER.size > len(buf):
        return None
    magic, version, length, checksum, own = HEADER.unpack_from(buf, offset)
    if magic != MAGIC or version != FORMAT_VERSION or length > MAX_FRAME:
        return None
    if zlib.crc32(buf[offset : offset + _CHECKED.size]) != own:
        return None
    return length, checksum


def read_frame(buf: bytes | memoryview, offset: int) -> tuple[bytes, int] | None:
    """The payload at `offset` and the offset after it, or None if no whole frame is there."""
    header = _header(buf, offset)
    if header is None:
        return None
    length, checksum = header
    end = offset + HEADER.size + length
    if end > len(buf):
        return None
    payload = bytes(buf[offset + HEADER.size : end])
    if crc(length, payload) != checksum:
        return None
    return payload, end


def frames(buf: bytes | memoryview, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, payload) of consecutive whole frames; stop at the first bad one."""
    while (found := read_frame(buf, offset)) is not None:
        yield offset, found[0]
        offset = found[1]


def payload_crc(buf: bytes | memoryview, offset: int) -> int:
    """The payload checksum in the header of the whole frame at `offset`."""
    return int(HEADER.unpack_from(buf, offset)[3])


def fault(buf: bytes | memoryview, offset: int) -> str | None:
    """Why the frame at `offset` does not read: None when it is a torn tail, else the damage.

    Decided from the frame's own header, never from what its bytes contain (a stored
    bytes value may hold a whole frame): a torn write is a prefix of a frame, so
    either its header is cut short, or the header is whole and its declared end
    lies past the end of what was read.
    """
    rest = bytes(buf[offset : offset + HEADER.size])
    if len(rest) < HEADER.size:
        prefix = MAGIC + bytes([FORMAT_VERSION])
        return None if prefix.startswith(rest[: len(prefix)]) else "a cut header that is no frame's"
    header = _header(buf, offset)
    if header is None:
        return "header checksum or magic mismatch"
    if offset + HEADER.size + header[0] > len(buf):
        return None
    return "payload checksum mismatch"
