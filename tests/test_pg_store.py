"""Rules only the PostgreSQL store has: its schema, its URL, its driver, its processes.

The rules both stores share run on both in test_store*.py and test_store_model.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from runner.store import (
    WORK,
    NewPromise,
    State,
    StoreFormatError,
    StoreUnavailable,
    open_store,
    redact,
    settled_topic,
)
from tests.e2e_support import APPS
from tests.helpers import (
    PG_DATABASE,
    REPO_ROOT,
    cli_env,
    drop_pg_schema,
    kill_group,
    new_pg_schema,
    pg_unreachable,
    run_cli,
)

pytestmark = pytest.mark.skipif(pg_unreachable() is not None, reason=str(pg_unreachable()))


@pytest.fixture
def url() -> Iterator[str]:
    made = new_pg_schema()
    yield made
    drop_pg_schema(made)


def python(code: str, url: str) -> subprocess.Popen[str]:
    """A process running `code` with the store's URL as argv[1], its output piped."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), url], cwd=REPO_ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_schema_of_another_version_is_refused_with_a_clear_error(url: str) -> None:
    import psycopg

    open_store(url).close()
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_DATABASE, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".meta SET value = %s WHERE key = %s', ("99", "version"))
    with pytest.raises(StoreFormatError, match="version 99; this runner reads version 1"):
        open_store(url)


def test_schemas_in_one_database_are_separate_stores(url: str) -> None:
    other_url = new_pg_schema()
    try:
        one, other = open_store(url), open_store(other_url)
        one.create([NewPromise("a", "f")])
        assert one.get("a") is not None and other.get("a") is None
        assert other.claim("w") == [] and len(one.claim("w")) == 1
        one.close()
        other.close()
    finally:
        drop_pg_schema(other_url)


def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(StoreUnavailable, match="invalid schema name"):
        open_store(f"{PG_DATABASE}?schema=Robert');DROP")


def test_without_the_driver_the_url_names_the_extra() -> None:
    code = """
        import sys
        sys.modules["psycopg"] = None  # as if the extra were not installed
        from runner.store import StoreUnavailable, open_store
        try:
            open_store(sys.argv[1])
        except StoreUnavailable as exc:
            print(exc)
    """
    proc = python(code, "postgresql://u:secret@127.0.0.1/test")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == ("postgresql://u:***@127.0.0.1/test needs the PostgreSQL driver: "
                           "pip install 'fanout-runner[postgres]'")


def test_a_password_never_shows_in_errors_or_reprs(url: str) -> None:
    assert redact("at postgresql://me:s3cr%40t@db:5432/x and postgres://a:b@c/d") == (
        "at postgresql://me:***@db:5432/x and postgres://a:***@c/d")
    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql://root:hunter2@127.0.0.1:1/test")  # nothing listens on port 1
    assert "hunter2" not in str(caught.value) and "root:***@" in str(caught.value)
    with_password = url.replace("root@", "root:hunter2@")  # trust auth: the password is ignored
    store = open_store(with_password)
    assert "hunter2" not in repr(store) and "hunter2" not in str(store.location)
    store.close()


def test_two_processes_claim_disjoint_tasks_without_waiting_on_each_other(url: str) -> None:
    store = open_store(url)
    store.create([NewPromise(f"t{i}", "f") for i in range(200)])
    code = """
        import os, sys
        from runner.store import open_store
        store, mine = open_store(sys.argv[1]), []
        while claims := store.claim(f"w{os.getpid()}", limit=3):
            mine += [c.id for c in claims]
        print(" ".join(mine))
    """
    procs = [python(code, url) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    claimed = [out.split() for out, _ in outputs]
    assert sorted(claimed[0] + claimed[1]) == sorted(f"t{i}" for i in range(200))  # each once
    assert all(c.counter == 1 for c in store.claims())
    store.close()


def test_a_locked_ready_task_is_skipped_not_waited_for(url: str) -> None:
    import psycopg

    store = open_store(url)
    store.create([NewPromise("held", "f"), NewPromise("free", "f")])
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_DATABASE) as other:  # another claimer, mid-transaction on "held"
        other.execute(f'SELECT 1 FROM "{schema}".tasks WHERE id = %s FOR UPDATE', ("held",))
        started = time.monotonic()
        assert [c.id for c in store.claim("w", limit=2)] == ["free"]
        assert time.monotonic() - started < 2.0
    store.close()


def test_a_commit_wakes_a_watcher_of_its_topic_only(url: str) -> None:
    store, writer = open_store(url), open_store(url)
    work, settled = store.watch(WORK), store.watch(settled_topic("mine"))
    writer.create([NewPromise("mine", "f", runnable=False), NewPromise("other", "f", runnable=False)])
    assert not work.wait(0.2)  # nothing claimable was created
    writer.create([NewPromise("job", "f")])
    assert work.wait(10)
    writer.settle("other", State.RESOLVED)
    assert not settled.wait(0.2)
    writer.settle("mine", State.RESOLVED)
    assert settled.wait(10)
    for handle in (work, settled, store, writer):
        handle.close()


def test_a_process_killed_mid_transaction_leaves_nothing_half_written(url: str) -> None:
    store = open_store(url)
    store.create([NewPromise("parent", "f")])
    [claim] = store.claim("w")
    code = """
        import os, sys, time
        from runner.store import NewPromise, State, open_store
        from runner.store.pg import connection

        def stall(tx):  # every write of the transaction is made; the commit is next
            print("written", flush=True)
            time.sleep(60)

        connection.Tx.send = stall
        store = open_store(sys.argv[1])
        store.complete("parent", int(sys.argv[2]), State.RESOLVED, 1,
                       creates=[NewPromise(f"parent.{i}", "f", parent="parent") for i in range(50)])
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), url, str(claim.counter)],
                            cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "written\n"
    kill_group(proc)  # SIGKILL: the server rolls the transaction back when the socket closes
    done = store.complete("parent", claim.counter, State.REJECTED, "here")  # its locks are gone too
    assert done.state is State.REJECTED
    assert store.children("parent") == [] and store.stats().by_state["pending"] == 0
    store.close()


def test_runner_status_and_errors_never_show_the_password(url: str) -> None:
    with_password = url.replace("root@", "root:hunter2@")  # trust auth: the password is ignored
    done = run_cli("invoke", "factorial", "--arg", "3", "--store", with_password, env={"RUNNER_APP": APPS})
    assert done.returncode == 0, done.stderr
    status = run_cli("status", "--json", "--store", with_password)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["store"] == url.replace("root@", "root:***@")
    refused = run_cli("status", "--store", "postgresql://root:hunter2@127.0.0.1:1/test")
    assert refused.returncode == 3 and refused.stderr.count("\n") == 1, refused.stderr
    assert "hunter2" not in refused.stderr + refused.stdout and "root:***@" in refused.stderr


def test_without_the_driver_a_command_on_a_url_is_one_line_naming_the_extra() -> None:
    code = "import sys; sys.modules['psycopg'] = None; from runner.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "status", "--store", "postgresql:///test"],
                          cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr == ("runner: error: postgresql:///test needs the PostgreSQL driver: "
                           "pip install 'fanout-runner[postgres]'\n")


def test_history_on_a_url_is_one_clear_error(url: str) -> None:
    from runner import Client

    with Client(url) as client, pytest.raises(StoreUnavailable, match="keeps no log of executions"):
        client.history("any")
