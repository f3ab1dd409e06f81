"""Running commands: `runner start` (a supervisor) and `runner invoke` (one run, waited for)."""

from __future__ import annotations

import os
import sys
import time

import click

from runner.store import DEFAULT_LEASE, Promise, State

from ..client import Client
from ..errors import SupervisorRunning
from ..invoke import wait
from ..retention import Retention
from ..shared import DEFAULT_LAPSE, MIN_LAPSE
from ..supervisor import Supervisor
from . import progress
from .durations import Duration
from .group import EXIT_REJECTED, Env, cli, common, parse_json, to_json


@cli.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Branches each worker runs at once.")
@click.option("--lease", type=Duration(), default=DEFAULT_LEASE, show_default=True,
              help="How long a claim outlives its worker's last heartbeat (every third of it), "
                   "when nobody saw the worker die.")
@click.option("--retain", type=Duration(), default=None,
              help="Remove whole runs settled longer ago than this (e.g. 7d); default: keep everything.")
@click.option("--gc-every", type=Duration(), default="1h", show_default=True,
              help="How often --retain removes what has aged out.")
@click.option("--lapse", type=Duration(minimum=MIN_LAPSE), default=DEFAULT_LAPSE, show_default=True,
              help="On a store several supervisors share (PostgreSQL): how long one may miss its "
                   "heartbeats before another declares it dead and runs its branches.")
@common
def start(env: Env, workers: int, concurrency: int, lease: float, retain: float | None,
          gc_every: float, lapse: float) -> None:
    """Run the supervisor and its workers until Ctrl-C or SIGTERM (a second one kills).

    \b
    Example:
      runner start --workers 4
    """
    store, reg = env.open()
    # Refuse before announcing ourselves: a second supervisor says one thing, that it cannot run.
    if not store.lock_supervisor():
        raise SupervisorRunning(f"a supervisor is already running on {env.store}")
    click.echo(f"runner: supervisor {os.getpid()} on {env.store} with {workers} workers "
               f"x {concurrency} (Ctrl-C drains, a second Ctrl-C kills)", err=True)
    retention = None if retain is None else Retention(retain, gc_every)
    Supervisor(store, env.store, reg, workers=workers, concurrency=concurrency, lease=lease,
               retention=retention, lapse=lapse).run()
    click.echo("runner: supervisor stopped", err=True)


@cli.command()
@click.argument("func")
@click.option("--arg", "args", multiple=True, metavar="JSON", help="One positional argument (repeatable).")
@click.option("--id", "promise_id", help="Root promise id; invoking an existing id attaches to that run.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Workers of the embedded supervisor, when none is running.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--json", "as_json", is_flag=True, help="Print exactly the result as JSON.")
@click.option("--no-wait", is_flag=True, help="Create the root promise, print its id, and return.")
@click.option("--timeout", type=Duration(), default=None,
              help="Reject the run and its pending children if not settled after this long (e.g. 30s).")
@common
def invoke(env: Env, func: str, args: tuple[str, ...], promise_id: str | None, workers: int,
           concurrency: int, as_json: bool, no_wait: bool, timeout: float | None) -> None:
    """Run FUNC durably and print its result.

    Without a supervisor on the store, one runs embedded for the duration.

    \b
    Example:
      runner invoke notify_all --id order-42 --arg '{"order_id": "o-42"}'
    """
    values = [parse_json(text, f"--arg #{i}") for i, text in enumerate(args, 1)]
    client = Client(env.store, env.apps)
    started = time.monotonic()
    handle = client.start(func, *values, id=promise_id, timeout=timeout)  # children inherit its deadline
    if no_wait:
        click.echo(to_json({"id": handle.id, "state": handle.state.value}) if as_json else handle.id)
        return
    # Live progress only for a person at a terminal; pipes and --json get the plain result.
    with progress.for_invoke(client.store, handle.id, enabled=not as_json and sys.stdout.isatty()) as view:

        def settled(done: Promise) -> None:  # shown before an embedded supervisor drains
            view.finish()
            show_result(done, time.monotonic() - started, as_json)
            sys.stdout.flush()

        # Unlike a client's own wait, invoke supervises the store itself when nobody does.
        promise = wait(client.store, env.store, client.registry, handle.id, workers=workers,
                       concurrency=concurrency, on_change=view.update, on_settled=settled)
    sys.exit(0 if promise.state is State.RESOLVED else EXIT_REJECTED)


def show_result(promise: Promise, wall: float, as_json: bool) -> None:
    """The value alone for machines and pipes; with a status line and timings for a person."""
    if as_json or not sys.stdout.isatty():
        click.echo(to_json(promise.value, indent=None if as_json else 2))
        return
    click.echo(f"{promise.func} {promise.id} {promise.state.value} after {wall:.2f} s")
    click.echo(to_json(promise.value, indent=2))
    value = promise.value
    if isinstance(value, dict) and {"slowest_ms", "sum_ms"} <= value.keys():
        click.echo(f"wall {wall * 1000:.0f} ms | slowest branch {value['slowest_ms']} ms | "
                   f"sum of branches {value['sum_ms']} ms")
