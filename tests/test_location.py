"""Where a store is (runner/location.py): a directory or a URL, and where a URL's local files go."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from runner.location import StoreLocation
from runner.store import StoreUnavailable


def test_a_directory_is_its_own_files_and_its_history(tmp_path: Path) -> None:
    where = StoreLocation(tmp_path / "store")
    assert not where.url and where.files() == tmp_path / "store" and not where.exists()
    assert where.history_dir() == str(tmp_path / "store")


def test_a_urls_files_go_to_the_state_dir_named_without_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    where = StoreLocation("postgresql://app:s3cret@db:5432/jobs?schema=shop")
    files = where.files()
    assert files.parent == tmp_path / "fanout-runner" and files.is_dir()
    assert "s3cret" not in str(files) and "jobs" in files.name and "shop" in files.name
    assert stat.S_IMODE(files.stat().st_mode) == 0o700
    assert str(where) == "postgresql://app:***@db:5432/jobs?schema=shop" and "s3cret" not in repr(where)
    assert where.spec.endswith("s3cret@db:5432/jobs?schema=shop")  # passed on to child processes as given
    other = StoreLocation("postgresql://app:s3cret@db:5432/jobs?schema=other").files()
    assert other != files  # another schema, another project: files of its own


def test_a_urls_history_is_one_clear_error() -> None:
    with pytest.raises(StoreUnavailable, match="keeps no log of executions"):
        StoreLocation("postgresql:///test").history_dir()
