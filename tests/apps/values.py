"""Leaves returning values JSON has no word for: the machine output must still be strict JSON."""

from __future__ import annotations

from typing import Any

from runner import function


@function
def odd_values(big_digits: int) -> dict[str, Any]:
    return {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "raw": b"\x00\xff",
            "text": "\x00\xff", "int_keys": {1: "one"}, "big": 10**big_digits}
