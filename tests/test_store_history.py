"""Executions read back from the log: one per claim, each ended as the log says it ended."""

from __future__ import annotations

from pathlib import Path

from runner.store import NewPromise, State, open_history, open_store


def test_each_claim_is_an_execution_ended_by_what_the_log_recorded(store_dir: Path) -> None:
    store = open_store(str(store_dir))
    store.create([NewPromise("flow", "wf"), NewPromise("leaf", "send"), NewPromise("lost", "send")], now=1.0)
    claims = {c.id: c for c in store.claim("10@1.00", now=2.0, limit=3)}
    store.suspend("flow", claims["flow"].counter, ["leaf"], now=3.0,
                  creates=[NewPromise("flow.0", "send", parent="flow")])
    store.retry("leaf", claims["leaf"].counter, delay=0.0, error={"type": "OSError", "message": "x"}, now=4.0)
    store.release_owner("10@1.00", how="killed by SIGKILL", now=5.0)  # "lost" was held: a death
    again = {c.id: c for c in store.claim("11@2.00", now=6.0, limit=3)}
    store.complete("leaf", again["leaf"].counter, State.RESOLVED, "sent", now=7.0)
    store.release_owner("11@2.00", now=8.0, counted=False)  # stopped by its supervisor: no attempt spent

    history = open_history(str(store_dir))
    runs = {(e.promise_id, e.attempt, e.outcome) for e in history.executions()}
    assert runs == {("flow", 1, "suspended"), ("leaf", 1, "failed"), ("lost", 1, "died"),
                    ("leaf", 2, "resolved"), ("lost", 2, "released"), ("flow.0", 1, "released")}
    leaf = [e for e in history.executions() if e.promise_id == "leaf"]
    assert [(e.pid, e.started, e.ended) for e in leaf] == [(10, 2.0, 4.0), (11, 6.0, 7.0)]
    history.close()
    store.close()
