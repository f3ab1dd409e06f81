"""runner.effects: one journal line per recorded effect, tied to the promise that ran it."""

from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Any

import pytest

from runner import effects
from runner.context import Current, set_current


def recorded_in(store: Path, name: str, **fields: Any) -> dict[str, Any]:
    """Call effects.record as the function of promise run.0 (attempt 2) on `store` would."""

    def call() -> dict[str, Any]:
        set_current(Current("run.0", 2, "charge", store))
        return effects.record(name, **fields)

    return contextvars.copy_context().run(call)


def test_a_record_is_one_line_in_the_stores_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(effects.JOURNAL_ENV, raising=False)
    line = recorded_in(tmp_path, "charge", amount=5)
    assert effects.read(tmp_path / "effects.jsonl") == [line]
    assert {k: line[k] for k in ("effect", "promise_id", "attempt", "func", "amount")} == {
        "effect": "charge", "promise_id": "run.0", "attempt": 2, "func": "charge", "amount": 5}
    assert isinstance(line["pid"], int) and isinstance(line["time"], float)


def test_the_journal_may_live_outside_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "evidence.jsonl"
    monkeypatch.setenv(effects.JOURNAL_ENV, str(elsewhere))
    recorded_in(tmp_path / "store", "email")
    recorded_in(tmp_path / "store", "email")
    assert [r["effect"] for r in effects.read(elsewhere)] == ["email", "email"]
    assert effects.journal_path(tmp_path / "store") == elsewhere


def test_a_record_needs_a_running_function_and_leaves_the_runners_fields_alone(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="outside a running function"):
        effects.record("charge")
    with pytest.raises(ValueError, match="pid is recorded by the runner"):
        recorded_in(tmp_path, "charge", pid=1)


def test_a_line_cut_by_a_kill_is_no_record(tmp_path: Path) -> None:
    journal = tmp_path / "effects.jsonl"
    assert effects.read(journal) == []  # no journal yet: nothing ran
    effects.append(journal, {"effect": "a"})
    with open(journal, "a", encoding="utf-8") as file:
        file.write(json.dumps({"effect": "b"})[:7])  # a SIGKILL mid-write
    assert effects.read(journal) == [{"effect": "a"}]
