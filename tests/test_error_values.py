"""Errors keep their shape through the store: stored by error_value, raised by raise_error.

Each value goes through `normalize`, so what is rebuilt is what any process reading the
store would see.
"""

from __future__ import annotations

import errno
import sys
import types
from typing import Any

import pytest

from runner.error_values import error_value, raise_error
from runner.errors import Canceled, ChildFailed, NonDeterminism, TimedOut
from runner.store import Promise, State, normalize


class BadInput(ValueError):
    """A user's class, imported in this process (this module)."""


class Formatted(ValueError):
    """Its __init__ formats the argument: the stored args do not rebuild it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"bad code {code}")
        self.code = code


class Holder:
    class Nested(LookupError):
        pass


def rejected(value: Any, state: State = State.REJECTED) -> Promise:
    return Promise("wf.0", state, "leaf", [], "wf", {}, None, 0.0, 1.0, normalize(value), 1)


def round_trip(exc: BaseException) -> Exception:
    return raise_error(rejected(error_value(exc)))


@pytest.mark.parametrize("exc", [
    KeyError("k"), ValueError("v", 2), TypeError(), IndexError(3), ZeroDivisionError("division by zero"),
    UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte"),
    UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range(128)"),
    TimeoutError("slow"), ConnectionError("down"), BadInput("no such order"), Holder.Nested("deep"),
])
def test_a_class_this_process_has_comes_back_as_itself_with_its_args(exc: Exception) -> None:
    back = round_trip(exc)
    assert type(back) is type(exc) and back.args == exc.args and str(back) == str(exc)


def test_a_key_error_is_quoted_once() -> None:
    back = round_trip(KeyError("k"))
    assert str(back) == "'k'" and back.args == ("k",)


@pytest.mark.parametrize("exc", [
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such"),
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"),
    FileExistsError(errno.EEXIST, "File exists", b"/raw/bytes"),
])
def test_an_os_error_keeps_errno_strerror_and_filenames(exc: OSError) -> None:
    back = round_trip(exc)
    assert type(back) is type(exc) and str(back) == str(exc)
    assert isinstance(back, OSError)
    assert (back.errno, back.strerror, back.filename, back.filename2) == (
        exc.errno, exc.strerror, exc.filename, exc.filename2)


def test_a_class_whose_args_do_not_rebuild_it_arrives_as_child_failed_of_its_builtin_base() -> None:
    back = round_trip(Formatted(7))
    assert isinstance(back, ChildFailed) and isinstance(back, ValueError)
    assert not isinstance(back, Formatted)
    assert (back.type_name, back.message, back.promise_id) == ("Formatted", "bad code 7", "wf.0")
    assert (back.module, back.qualname, back.error_args) == (__name__, "Formatted", ["bad code 7"])
    assert str(back) == "Formatted: bad code 7"
    assert type(round_trip(Formatted(8))) is type(back)  # one class per builtin base


def test_a_class_of_a_module_not_imported_here_is_never_imported() -> None:
    value = error_value(BadInput("x")) | {"module": "tests.never_imported_module"}
    back = raise_error(rejected(value))
    assert "tests.never_imported_module" not in sys.modules
    assert isinstance(back, ChildFailed) and isinstance(back, ValueError)


def test_a_module_getattr_is_never_called() -> None:
    calls: list[str] = []
    module = types.ModuleType("tests.lazy_module")
    module.__getattr__ = lambda name: calls.append(name) or BadInput  # type: ignore[method-assign]
    sys.modules[module.__name__] = module
    try:
        back = raise_error(rejected(error_value(BadInput("x")) | {"module": module.__name__}))
    finally:
        del sys.modules[module.__name__]
    assert calls == [] and isinstance(back, ChildFailed)


def test_a_unicode_error_that_cannot_be_rebuilt_is_still_caught_as_one() -> None:
    value = error_value(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")) | {"args": ["wrong"]}
    back = raise_error(rejected(value))
    assert isinstance(back, ChildFailed) and isinstance(back, UnicodeDecodeError)
    assert isinstance(back, ValueError) and back.type_name == "UnicodeDecodeError"
    with pytest.raises(UnicodeDecodeError):
        raise back


def test_unstorable_args_are_left_out_and_the_message_stands_in() -> None:
    value = error_value(ValueError({1, 2}))
    assert "args" not in value and value["message"] == "{1, 2}"
    back = raise_error(rejected(value))
    assert type(back) is ValueError and str(back) == "{1, 2}"


def test_the_stored_value_keeps_type_and_message_for_readers() -> None:
    value = normalize(error_value(BadInput("no such order")))
    assert value == {"type": "BadInput", "message": "no such order", "module": __name__,
                     "qualname": "BadInput", "base": "ValueError", "args": ["no such order"]}


def test_a_child_failed_passes_its_stored_error_on_unchanged() -> None:
    first = raise_error(rejected(error_value(Formatted(3))))
    assert isinstance(first, ChildFailed)
    assert error_value(first) == normalize(error_value(Formatted(3)))


@pytest.mark.parametrize(("value", "kind", "text"), [
    ({"type": "ValueError", "message": "too much"}, ValueError, "too much"),
    ({"type": "KeyError", "message": "k"}, KeyError, "'k'"),  # built from the message, as before
    ({"type": "Rejected", "message": "no"}, ChildFailed, "Rejected: no"),
    ({"type": "UnicodeDecodeError", "message": "bad"}, UnicodeDecodeError, "UnicodeDecodeError: bad"),
    ("not a mapping", ChildFailed, "Error"),
])
def test_an_old_type_and_message_value_raises_as_before(value: Any, kind: type, text: str) -> None:
    back = raise_error(rejected(value))
    assert isinstance(back, kind) and str(back) == text


def test_stop_iteration_never_comes_back_as_itself() -> None:
    """Raised where a coroutine awaits, it would become a RuntimeError."""
    back = round_trip(StopIteration(1))
    assert type(back) is ChildFailed and back.type_name == "StopIteration"


def test_cancel_and_timeout_keep_their_own_classes() -> None:
    canceled = raise_error(rejected({"type": "Canceled", "message": "by hand"}, State.REJECTED_CANCELED))
    timed_out = raise_error(rejected({"type": "TimeoutError", "message": "late"}, State.REJECTED_TIMEDOUT))
    assert type(canceled) is Canceled and canceled.message == "by hand"
    assert type(timed_out) is TimedOut and error_value(timed_out)["type"] == "TimedOut"


def test_a_runner_error_with_its_own_constructor_arrives_as_child_failed() -> None:
    back = round_trip(NonDeterminism("wf", 0, "a", "b"))
    assert type(back) is ChildFailed and back.type_name == "NonDeterminism"
