"""Overview commands: `runner tree` (one run's call graph), `runner status` (the supervisor)
and `runner gc` (retention, by hand)."""

from __future__ import annotations

import time

import click

from . import report, views
from .durations import Duration, format_duration
from .group import Env, cli, common, emit, json_option, open_existing
from .status import status as gather_status


@cli.command()
@click.argument("promise_id", metavar="ID")
@json_option
@common
def tree(env: Env, promise_id: str, as_json: bool) -> None:
    """Show the call graph of a run: each promise's function, state, duration and attempt.

    Coloured on a terminal, plain when piped. The attempt and worker of a promise are
    known while it is pending.

    \b
    Example:
      runner tree order-42
    """
    data = report.tree(open_existing(env), promise_id)
    emit(data, as_json, views.tree(data))


@cli.command()
@json_option
@common
def status(env: Env, as_json: bool) -> None:
    """Show the supervisor, its workers and what each runs, the queue and counts by state.

    Says so when no supervisor is running (and exits 0: that is a state, not an error).

    \b
    Example:
      runner status --store /var/lib/app/.runner
    """
    data = gather_status(open_existing(env), env.store)
    emit(data, as_json, views.status(data))


@cli.command()
@click.option("--older-than", "age", type=Duration(), required=True,
              help="Remove whole runs whose every promise settled longer ago than this (e.g. 7d).")
@json_option
@common
def gc(env: Env, age: float, as_json: bool) -> None:
    """Remove old settled runs: each one whole (its root and every promise below it).

    A run with anything still pending is kept, however old. The supervisor does the
    same on a schedule when started with --retain.

    \b
    Example:
      runner gc --older-than 30d
    """
    removed = open_existing(env).gc(time.time() - age)
    lines = [f"removed {len(removed)} run{'s' if len(removed) != 1 else ''} settled over "
             f"{format_duration(age)} ago"]
    emit({"removed": removed}, as_json, lines)
