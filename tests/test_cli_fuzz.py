"""Whatever a user types, the command answers with an exit code and at most one line of error.

Hypothesis builds command lines from ids, JSON arguments and option values a user
could give; each runs in this process through `runner.cli.main` against one store
that keeps what earlier examples wrote (so `get`, `resolve` and `tree` meet real
promises too). Only commands that do not start workers are drawn: what workers do
with user code has its own tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import cli

APP = "tests.apps.values"
FUNCS = ["odd_values"] * 6 + ["no_such_function", ""]  # mostly a real one, so runs get stored

# Text as argv can carry it: anything but NUL, surrogates included (undecodable bytes
# in argv arrive as lone surrogates).
text = st.text(st.characters(blacklist_characters="\x00"), max_size=40)
known_ids = st.sampled_from(["run-1", "run-2", "run-3"])  # invoke stores them; the rest meet them
ids = st.one_of(known_ids, known_ids, text, st.sampled_from(["run-1.0", "x" * 1025, " ", "-", "--help"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
json_texts = st.one_of(
    json_values.map(json.dumps),
    text,
    st.integers(1, 2000).map(lambda n: "[" * n + "]" * n),
    st.integers(4000, 6000).map(lambda n: "9" * n),
)
durations = st.one_of(text, st.sampled_from(["1s", "0s", "-1s", "1e400s", "10ms", "2h", "nan"]))
stores = st.sampled_from([None, None, None, "", "a" * 5000, "store/../store", "/dev/null", "."])


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    kind = draw(st.sampled_from(["invoke", "list", "get", "resolve", "reject", "cancel", "tree", "status"]))
    if kind == "invoke":
        argv = ["invoke", draw(st.sampled_from(FUNCS) | text), "--no-wait"]
        for value in draw(st.lists(json_texts, max_size=2) | st.integers(0, 5).map(lambda n: [str(n)])):
            argv += ["--arg", value]
        if draw(st.booleans()):
            argv += ["--id", draw(ids)]
        if draw(st.booleans()):
            argv += ["--timeout", draw(durations)]
        if draw(st.booleans()):
            argv.append("--json")
    elif kind == "list":
        argv = ["promises", "list"]
        for option in ("--state", "--prefix", "--parent", "--limit", "--cursor"):
            if draw(st.booleans()):
                argv += [option, draw(text | st.integers(-5, 10**30).map(str))]
    elif kind in ("get", "cancel"):
        argv = ["promises", kind, draw(ids)]
    elif kind == "resolve":
        argv = ["promises", "resolve", draw(ids), "--value", draw(json_texts)]
    elif kind == "reject":
        argv = ["promises", "reject", draw(ids), "--error", draw(text), "--type", draw(text)]
    else:
        argv = [kind] + ([draw(ids)] if kind == "tree" else [])
    if draw(st.booleans()) and kind in ("get", "tree", "status", "list"):
        argv.append("--json")
    store = draw(stores)
    return argv + ["--app", APP] + ([] if store is None else ["--store", store])


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run `runner ARGV` in this process; its exit code and what it wrote to stderr."""
    err = io.StringIO()
    handlers = logging.getLogger().handlers[:]
    old_argv = sys.argv
    sys.argv = ["runner", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code
            else:
                code = 0
    finally:
        sys.argv = old_argv
        logging.getLogger().handlers[:] = handlers
    return (code if isinstance(code, int) else 1), err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_any_command_line_gets_an_exit_code_and_one_line(workdir: Path, argv: list[str]) -> None:
    with in_directory(workdir):
        code, err = run_cli(argv)
    assert code in (0, 1, 2, 3), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code not in (0, 1):
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("runner: error: "), (argv, err)
