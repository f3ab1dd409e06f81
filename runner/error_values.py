"""How an exception is stored when a promise is rejected, and rebuilt where it is awaited.

A stored error is a mapping. "type" and "message" are what people and tools read (the
CLI, chaos); the rest is what rebuilding takes: the class's "module" and "qualname",
its "args" when they can be stored, "base", the nearest builtin class it derives from,
and for an OSError its "errno", "strerror", "filename" and "filename2". A mapping
with only "type" and "message" (older stores, `runner promises reject`) raises as it
always did: a builtin type built from the message, anything else as ChildFailed.

Rebuilding never imports anything: the class is looked up among the modules the
awaiting process has imported already, and is used only when building it from its
stored arguments gives back the stored message. Otherwise the error arrives as
ChildFailed, which is also an instance of the stored builtin base.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard

from runner.store import NotSerializable, Promise, State, normalize

from .errors import Canceled, ChildFailed, TimedOut

_OS_FIELDS = ("errno", "strerror", "filename", "filename2")
# Raised where a coroutine awaits, these would turn into RuntimeError (PEP 479).
_NEVER_RAISED = (StopIteration, StopAsyncIteration)


def error_value(exc: BaseException) -> dict[str, Any]:
    """The mapping stored for `exc`: a ChildFailed passes on the one it arrived with, so
    whoever awaits next can still rebuild the original."""
    if isinstance(exc, ChildFailed):
        return dict(exc.error)
    cls = type(exc)
    value: dict[str, Any] = {"type": cls.__name__, "message": _message(exc), "module": cls.__module__,
                             "qualname": cls.__qualname__, "base": _builtin_base(cls).__name__}
    fields: dict[str, Any] = {"args": list(exc.args)}
    if isinstance(exc, OSError):
        fields.update((name, getattr(exc, name)) for name in _OS_FIELDS)
    for name, field in fields.items():
        with contextlib.suppress(NotSerializable):  # left out, the message stands in for it
            value[name] = normalize(field)
    return value


def raise_error(promise: Promise) -> Exception:
    """The exception to raise where a rejected promise is awaited."""
    error = promise.value if isinstance(promise.value, dict) else {}
    message = str(error.get("message", ""))
    if promise.state is State.REJECTED_CANCELED:
        return Canceled(promise.id, "Canceled", message or f"{promise.id} was canceled")
    if promise.state is State.REJECTED_TIMEDOUT:
        return TimedOut(promise.id, "TimedOut", message or f"{promise.id} timed out")
    return rebuild(promise.id, error)


def rebuild(promise_id: str, error: Mapping[str, Any]) -> Exception:
    """The stored error as its own class when this process can rebuild it, else as ChildFailed."""
    type_name = str(error.get("type", "Error"))
    message = str(error.get("message", ""))
    if "module" not in error:  # stored before errors kept their class: as it always was
        builtin = getattr(builtins, type_name, None)
        if _raisable(builtin):
            with contextlib.suppress(Exception):  # a builtin whose constructor wants other arguments
                return builtin(message)
    else:
        cls = _imported_class(error.get("module"), error.get("qualname"))
        if cls is not None and (exc := _construct(cls, error, message)) is not None:
            return exc
    return _failed(promise_id, type_name, message, error)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a user's __str__ that fails must not lose the error itself
        return f"<{type(exc).__name__} whose str() failed>"


def _builtin_base(cls: type) -> type:
    """The nearest builtin class in `cls`'s ancestry (itself if builtin): what `except` still matches."""
    return next(c for c in cls.__mro__ if c.__module__ == "builtins")


def _raisable(cls: Any) -> TypeGuard[type[Exception]]:
    return isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _NEVER_RAISED)


def _imported_class(module: Any, qualname: Any) -> type[Exception] | None:
    """The class named, if the module is imported here already; never imports one.

    Looked up through each namespace's own dict, so a module's __getattr__ never runs.
    """
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        namespace = getattr(found, "__dict__", None)
        found = namespace.get(part) if isinstance(namespace, Mapping) else None
    return found if _raisable(found) else None


def _construct(cls: type[Exception], error: Mapping[str, Any], message: str) -> Exception | None:
    """`cls` built from the stored arguments, or None if that does not give the stored error back."""
    args = error.get("args", [message])
    if issubclass(cls, OSError) and error.get("filename") is not None:
        # The filenames are not among an OSError's args; its constructor takes them after strerror.
        args = [error.get("errno"), error.get("strerror"), error["filename"], None, error.get("filename2")]
    if not isinstance(args, list):
        return None
    try:
        exc = cls(*args)
    except Exception:
        return None
    # A class whose __init__ formats its arguments into the message does not come back from
    # the formatted args: told apart by its message, it arrives as ChildFailed instead.
    if type(exc) is not cls or _message(exc) != message:
        return None
    return exc


def _failed(promise_id: str, type_name: str, message: str, error: Mapping[str, Any]) -> ChildFailed:
    base = getattr(builtins, str(error.get("base", type_name)), None)
    cls = _failed_as(base) if _raisable(base) and base is not Exception else ChildFailed
    try:
        exc = cls(promise_id, type_name, message, error)
    except Exception:  # a builtin whose constructor wants other arguments (ExceptionGroup)
        return ChildFailed(promise_id, type_name, message, error)
    if isinstance(exc, OSError):
        for name in _OS_FIELDS:
            with contextlib.suppress(TypeError, AttributeError):
                setattr(exc, name, error.get(name))
    return exc


_FAILED_AS: dict[type, type[ChildFailed]] = {}


def _failed_as(base: type[Exception]) -> type[ChildFailed]:
    """ChildFailed that is also a `base`, made once per base so `type(e)` is stable."""
    if base not in _FAILED_AS:
        try:
            made = type(f"ChildFailed[{base.__name__}]", (ChildFailed, base),
                        {"__module__": ChildFailed.__module__})
        except TypeError:  # a base whose layout cannot be combined with another class
            made = ChildFailed
        _FAILED_AS[base] = made
    return _FAILED_AS[base]


def error_text(error: Any) -> str:
    """A stored error on one line, "Type: message": what the CLI and a parked run's message show."""
    if isinstance(error, dict) and "type" in error:
        return f"{error['type']}: {error.get('message', '')}".rstrip(": ")
    return json.dumps(error, default=str, ensure_ascii=False)
