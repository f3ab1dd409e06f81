"""Stored values as strict JSON (RFC 8259), for `--json` output and printed results.

The store holds msgpack, which has what JSON lacks: bytes, non-finite floats, map keys
that are not text. Each gets one tagged object, so a strict parser reads every document
and bytes never pass for text:

    b"\\x00\\x01"        -> {"$bytes": "AAE="}            (base64)
    nan, inf, -inf     -> {"$float": "NaN"}, {"$float": "Infinity"}, {"$float": "-Infinity"}
    {1: "a", b"k": 2}  -> {"$map": [[1, "a"], [{"$bytes": "aw=="}, 2]]}   (any key not text)

Integers of any size print whole (JSON numbers have no size limit).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}


def plain(value: Any) -> Any:
    """The value with every non-JSON part replaced by its tagged object."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: plain(item) for key, item in value.items()}
        return {"$map": [[plain(key), plain(item)] for key, item in value.items()]}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)  # not reached for stored values; keeps output whole for anything else


def dumps(value: Any, *, indent: int | None = None) -> str:
    """One strict JSON document: never a bare NaN, never bytes read as text."""
    return json.dumps(plain(value), indent=indent, ensure_ascii=False, allow_nan=False)
