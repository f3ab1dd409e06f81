"""Overview commands: `runner tree` (one run's call graph) and `runner status` (the supervisor)."""

from __future__ import annotations

import click

from . import report, views
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
    data = gather_status(open_existing(env), env.store_dir)
    emit(data, as_json, views.status(data))
