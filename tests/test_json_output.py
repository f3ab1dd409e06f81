"""Every `--json` document, and every piped result, is strict JSON (RFC 8259)."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from runner.cli import jsonout
from tests.e2e_support import Workspace

APP = ("--app", "tests.apps.values")


def strict(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as a strict parser in another language would."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_values_json_lacks_become_tagged_objects() -> None:
    doc = strict(jsonout.dumps({"n": float("nan"), "i": float("-inf"), "b": b"\x01", "k": {2: [b""]},
                                "t": (1, 2.5), "s": "\u00e9"}))
    assert doc == {"n": {"$float": "NaN"}, "i": {"$float": "-Infinity"},
                   "b": {"$bytes": base64.b64encode(b"\x01").decode()},
                   "k": {"$map": [[2, [{"$bytes": ""}]]]}, "t": [1, 2.5], "s": "\u00e9"}


@pytest.fixture
def whole_ints() -> Iterator[None]:
    """Let this process read integers of any size, as the command does."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("whole_ints")
def test_invoke_json_and_piped_results_parse_strictly(ws: Workspace) -> None:
    digits = 5000  # past Python's default 4,300-digit limit for int <-> str
    for extra in (("--json",), ()):
        done = ws.cli("invoke", "odd_values", *APP, *extra, "--arg", str(digits))
        assert done.returncode == 0, done.stderr
        value = strict(done.stdout)  # piped without --json: the result alone, nothing before it
        assert value["nan"] == {"$float": "NaN"} and value["inf"] == {"$float": "Infinity"}
        assert value["raw"] == {"$bytes": base64.b64encode(b"\x00\xff").decode()}
        assert value["text"] == "\x00\xff"
        assert value["int_keys"] == {"$map": [[1, "one"]]}
        assert value["big"] == 10**digits


def test_inspection_json_parses_strictly(ws: Workspace) -> None:
    assert ws.cli("invoke", "odd_values", *APP, "--id", "odd", "--json", "--arg", "3").returncode == 0
    for argv in (("promises", "get", "odd"), ("promises", "list"), ("tree", "odd"), ("status",)):
        done = ws.cli(*argv, "--json", *APP)
        assert done.returncode == 0, (argv, done.stderr)
        strict(done.stdout)
    got = strict(ws.cli("promises", "get", "odd", "--json", *APP).stdout)
    assert got["value"]["nan"] == {"$float": "NaN"}


def test_no_wait_json_is_a_document(ws: Workspace) -> None:
    done = ws.cli("invoke", "odd_values", *APP, "--no-wait", "--json", "--id", "later", "--arg", "1")
    assert done.returncode == 0, done.stderr
    assert strict(done.stdout) == {"id": "later", "state": "pending"}


def test_deeply_nested_arg_is_bad_input(ws: Workspace) -> None:
    done = ws.cli("invoke", "odd_values", *APP, "--arg", "[" * 50_000 + "]" * 50_000)
    assert done.returncode == 2
    assert done.stderr.startswith("runner: error:") and "Traceback" not in done.stderr
