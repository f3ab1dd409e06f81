"""User functions by name.

A promise records the name of the function it runs, never the function itself, so any
worker process that imported the same app modules can run it (and nothing read from the
store can point at arbitrary code).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from runner.errors import RegistryError, UnknownFunction
from runner.retry import Retry

__all__ = [
    "Registered",
    "Registry",
    "RegistryError",
    "UnknownFunction",
    "function",
    "registry",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Registered:
    """A registered function and what the worker needs to know to call it."""

    name: str
    fn: Callable[..., Any]
    retry: Retry = field(default_factory=Retry)
    is_workflow: bool = False  # an `async def` taking `ctx` first: it may spawn children
    is_async: bool = False


def _identity(fn: Callable[..., Any]) -> tuple[str, str]:
    """Where a function is defined; the same after its module is imported again."""
    return (getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn)))


def _describe(name: str, fn: Callable[..., Any], retry: Retry) -> Registered:
    is_async = inspect.iscoroutinefunction(fn)
    params = list(inspect.signature(fn).parameters)
    is_workflow = is_async and bool(params) and params[0] == "ctx"
    return Registered(name, fn, retry, is_workflow=is_workflow, is_async=is_async)


class Registry:
    """Names to functions, one name per function definition."""

    def __init__(self) -> None:
        self._by_name: dict[str, Registered] = {}

    def register(
        self, fn: Callable[..., Any], name: str | None = None, retry: Retry | None = None
    ) -> Registered:
        """Register `fn` under `name` (default: its `__name__`) and return the entry."""
        if not callable(fn):
            raise TypeError(f"cannot register {fn!r}: not callable (use @function(name=...))")
        name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(
                str(name), f"cannot register {fn!r}: give it a non-empty string name, not {name!r}"
            )
        taken = self._by_name.get(name)
        # A module imported twice (as a script and as a module, or reloaded) defines
        # the same function again; the newer object wins. Two definitions under one
        # name would make the store's record ambiguous, so that is refused.
        if taken is not None and _identity(taken.fn) != _identity(fn):
            raise RegistryError(
                name,
                f"function name {name!r} is taken by {'.'.join(_identity(taken.fn))}; "
                f"cannot register {'.'.join(_identity(fn))} under it",
            )
        entry = _describe(name, fn, retry if retry is not None else Retry())
        self._by_name[name] = entry
        # A fast path for name_of; a callable that takes no attributes (a builtin) is
        # still found by the slower module lookup there.
        with contextlib.suppress(AttributeError, TypeError):
            fn.__runner_name__ = name  # type: ignore[attr-defined]
        return entry

    @overload
    def function(self, fn: F, *, name: str | None = ..., retry: Retry | None = ...) -> F: ...

    @overload
    def function(
        self, fn: None = None, *, name: str | None = ..., retry: Retry | None = ...
    ) -> Callable[[F], F]: ...

    def function(
        self, fn: F | None = None, *, name: str | None = None, retry: Retry | None = None
    ) -> F | Callable[[F], F]:
        """Decorator, as `@function` or `@function(name=..., retry=...)`; returns fn as is."""

        def decorate(fn: F) -> F:
            self.register(fn, name=name, retry=retry)
            return fn

        return decorate if fn is None else decorate(fn)

    def lookup(self, name: str) -> Registered:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownFunction(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def name_of(self, fn: Callable[..., Any]) -> str:
        """The name `fn` is registered under, registering a module-level function on the fly.

        Only a module-level function can be found again by name in another process (by
        importing its module), so a lambda, a nested function or a method is refused.
        """
        name = getattr(fn, "__runner_name__", None)
        entry = self._by_name.get(name) if isinstance(name, str) else None
        if entry is not None and _identity(entry.fn) == _identity(fn):
            return entry.name
        short = getattr(fn, "__name__", None)
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if not isinstance(short, str) or module is None or getattr(module, short, None) is not fn:
            raise RegistryError(
                str(short or fn),
                f"cannot name {fn!r}: only module-level functions can be registered on the fly; "
                "decorate it with @function or pass a registered name to ctx.rpc",
            )
        return self.register(fn).name


registry = Registry()
function = registry.function
