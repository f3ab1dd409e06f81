"""Functions are registered and found by name; ambiguity is refused with a clear error."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import pytest

from runner.errors import RegistryError, RunnerError, UnknownFunction
from runner.registry import Registered, Registry, function, registry
from runner.retry import Retry


def module_level_leaf(x: int) -> int:
    return x + 1


async def module_level_workflow(ctx: Any, n: int) -> int:
    return n


def clone(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object with the same definition site, as a module re-import makes."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__)


@pytest.fixture
def reg() -> Registry:
    return Registry()


def test_bare_decorator_registers_under_the_function_name(reg: Registry) -> None:
    def leaf() -> None:
        pass

    assert reg.function(leaf) is leaf
    entry = reg.lookup("leaf")
    assert entry == Registered("leaf", leaf, Retry(), is_workflow=False, is_async=False)
    assert leaf.__runner_name__ == "leaf"  # type: ignore[attr-defined]


def test_decorator_with_name_and_retry(reg: Registry) -> None:
    policy = Retry(attempts=5)

    @reg.function(name="send", retry=policy)
    def deliver() -> None:
        pass

    assert reg.lookup("send").fn is deliver
    assert reg.lookup("send").retry is policy
    assert reg.name_of(deliver) == "send"
    with pytest.raises(UnknownFunction):
        reg.lookup("deliver")


def test_workflow_is_an_async_def_taking_ctx_first(reg: Registry) -> None:
    async def workflow(ctx: Any, x: int) -> None:
        pass

    async def async_leaf(x: int) -> None:
        pass

    def sync_with_ctx(ctx: Any) -> None:
        pass

    kinds = {
        fn.__name__: (e.is_workflow, e.is_async)
        for fn in (workflow, async_leaf, sync_with_ctx)
        for e in [reg.register(fn)]
    }
    assert kinds == {
        "workflow": (True, True),
        "async_leaf": (False, True),
        "sync_with_ctx": (False, False),
    }


def test_another_function_under_a_taken_name_is_refused(reg: Registry) -> None:
    reg.register(module_level_leaf, name="job")
    with pytest.raises(RegistryError, match=r"'job' is taken by .*module_level_leaf"):
        reg.register(module_level_workflow, name="job")
    assert reg.lookup("job").fn is module_level_leaf


def test_same_definition_registered_again_is_fine(reg: Registry) -> None:
    reg.register(module_level_leaf)
    reg.register(module_level_leaf)
    again = clone(module_level_leaf)  # as if the module were imported a second time
    reg.register(again)
    assert reg.lookup("module_level_leaf").fn is again
    assert reg.name_of(module_level_leaf) == "module_level_leaf"


def test_unknown_name_lists_what_is_registered(reg: Registry) -> None:
    for name in ("c", "a", "b"):
        reg.register(module_level_leaf, name=name)
    with pytest.raises(UnknownFunction) as caught:
        reg.lookup("x")
    assert str(caught.value) == "unknown function 'x' (registered: a, b, c)"
    assert caught.value.name == "x"
    assert isinstance(caught.value, RunnerError)


def test_unknown_name_in_an_empty_registry(reg: Registry) -> None:
    with pytest.raises(UnknownFunction, match=r"\(registered: none\)"):
        reg.lookup("x")


def test_name_of_registers_a_module_level_function_on_the_fly(reg: Registry) -> None:
    assert reg.name_of(module_level_workflow) == "module_level_workflow"
    assert reg.lookup("module_level_workflow").is_workflow


def test_name_of_refuses_what_cannot_be_found_again_by_name(reg: Registry) -> None:
    def nested() -> None:
        pass

    class Jobs:
        def method(self) -> None:
            pass

    for fn in (nested, lambda: None, Jobs().method, Jobs.method):
        with pytest.raises(RegistryError, match="only module-level functions"):
            reg.name_of(fn)
    assert reg.names() == []


def test_decorator_misuse_is_a_clear_error(reg: Registry) -> None:
    with pytest.raises(TypeError, match=r"not callable \(use @function\(name=...\)\)"):
        reg.function("send")  # type: ignore[call-overload]
    with pytest.raises(RegistryError, match="non-empty string name"):
        reg.register(module_level_leaf, name="")


def test_module_level_decorator_uses_the_default_registry() -> None:
    name = "tests.registry.default_registry_probe"

    @function(name=name)
    def probe() -> None:
        pass

    assert registry.lookup(name).fn is probe
    assert registry.name_of(probe) == name
