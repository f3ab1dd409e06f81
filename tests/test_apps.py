"""App modules are found (argument, then $RUNNER_APP, then pyproject) and imported."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from runner.apps import load_apps
from runner.errors import AppError, RunnerError


class MakeModule(Protocol):
    def __call__(self, body: str = ...) -> str: ...


@pytest.fixture(autouse=True)
def clean_import_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own sys.path copy (restored after) and no $RUNNER_APP."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("RUNNER_APP", raising=False)


@pytest.fixture
def make_module(tmp_path: Path) -> Iterator[MakeModule]:
    """Write a uniquely named module into tmp_path; forget it from sys.modules after."""
    names: list[str] = []

    def make(body: str = "LOADED = True\n") -> str:
        name = f"app_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(body)
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_explicit_modules_are_imported(tmp_path: Path, make_module: MakeModule) -> None:
    first, second = make_module(), make_module()
    assert load_apps([first, second], cwd=tmp_path) == [first, second]
    assert sys.modules[first].LOADED and sys.modules[second].LOADED


def test_working_directory_goes_first_on_sys_path(tmp_path: Path, make_module: MakeModule) -> None:
    sys.path.append(str(tmp_path))  # present but last: it must move to the front, once
    load_apps([make_module()], cwd=tmp_path)
    assert sys.path[0] == str(tmp_path)
    assert sys.path.count(str(tmp_path)) == 1


def test_env_var_is_used_when_no_modules_are_given(
    tmp_path: Path, make_module: MakeModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_module(), make_module()
    monkeypatch.setenv("RUNNER_APP", f" {first} ,, {second} ")
    assert load_apps(cwd=tmp_path) == [first, second]


def test_pyproject_is_used_when_nothing_else_is_given(
    tmp_path: Path, make_module: MakeModule
) -> None:
    name = make_module()
    (tmp_path / "pyproject.toml").write_text(f'[tool.runner]\napp = ["{name}"]\n')
    assert load_apps(cwd=tmp_path) == [name]
    assert name in sys.modules


def test_explicit_beats_env_beats_pyproject(
    tmp_path: Path, make_module: MakeModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit, from_env, from_file = make_module(), make_module(), make_module()
    monkeypatch.setenv("RUNNER_APP", from_env)
    (tmp_path / "pyproject.toml").write_text(f'[tool.runner]\napp = ["{from_file}"]\n')
    assert load_apps([explicit], cwd=tmp_path) == [explicit]
    assert load_apps(cwd=tmp_path) == [from_env]
    assert from_file not in sys.modules


def test_nothing_configured_loads_nothing(tmp_path: Path) -> None:
    assert load_apps(cwd=tmp_path) == []
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_apps(cwd=tmp_path) == []


def test_missing_module_is_a_one_line_app_error(tmp_path: Path) -> None:
    name = f"missing_{uuid.uuid4().hex}"
    with pytest.raises(AppError) as caught:
        load_apps([name], cwd=tmp_path)
    assert str(caught.value) == (
        f"cannot load app module '{name}': ModuleNotFoundError: No module named '{name}'"
    )
    assert caught.value.module == name
    assert isinstance(caught.value, RunnerError)


def test_module_failing_at_import_names_the_module_and_cause(
    tmp_path: Path, make_module: MakeModule
) -> None:
    name = make_module('raise RuntimeError("boom\\nsecond line")\n')
    with pytest.raises(AppError) as caught:
        load_apps([name], cwd=tmp_path)
    assert str(caught.value) == f"cannot load app module '{name}': RuntimeError: boom second line"


def test_module_exiting_at_import_is_an_app_error(tmp_path: Path, make_module: MakeModule) -> None:
    name = make_module("raise SystemExit(5)\n")
    with pytest.raises(AppError) as caught:
        load_apps([name], cwd=tmp_path)
    assert str(caught.value) == f"cannot load app module '{name}': SystemExit: 5"


def test_syntax_error_in_module_is_an_app_error(tmp_path: Path, make_module: MakeModule) -> None:
    name = make_module("def broken(:\n")
    with pytest.raises(AppError, match=f"'{name}': SyntaxError"):
        load_apps([name], cwd=tmp_path)


@pytest.mark.parametrize(
    "toml",
    ["[tool.runner\n", "[tool.runner]\napp = 3\n", '[tool.runner]\napp = ["ok", 1]\n'],
)
def test_bad_pyproject_is_an_app_error(tmp_path: Path, toml: str) -> None:
    (tmp_path / "pyproject.toml").write_text(toml)
    with pytest.raises(AppError, match=r"pyproject\.toml"):
        load_apps(cwd=tmp_path)


def test_single_string_in_pyproject_is_accepted(tmp_path: Path, make_module: MakeModule) -> None:
    name = make_module()
    (tmp_path / "pyproject.toml").write_text(f'[tool.runner]\napp = "{name}"\n')
    assert load_apps(cwd=tmp_path) == [name]
