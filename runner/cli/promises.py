"""The `runner promises ...` commands: list, show and settle promises from outside.

Thin wrappers: report.py gathers plain dicts, views.py draws them,
settle.py settles from outside. `--json` prints the gathered dict as it is (the
shapes are documented in README.md, "JSON output").
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.text import Text

from runner.store import PromiseStore, State

from .. import parked, settle
from . import report, views
from .group import Env, cli, common, emit, json_option, open_existing, parse_json, to_json

_STATES = [s.value for s in State]


@cli.group()
def promises() -> None:
    """List, show and settle promises.

    \b
    Examples:
      runner promises list --state pending
      runner promises get order-42.3
      runner promises resolve order-42.0 --value '"yes"'
      runner promises retry order-42
    """


@promises.command("list")
@click.option("--state", type=click.Choice(_STATES), help="Only promises in this state.")
@click.option("--prefix", help="Only ids starting with this text (a run's id lists the run).")
@click.option("--parent", metavar="ID", help="Only the direct children of this promise.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", callback=lambda _c, _p, v: _tags(v),
              help="Only promises with this tag (VALUE as JSON when it parses, else as text); repeatable.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--cursor", default=0, type=click.IntRange(0), help="Where the previous page ended.")
@json_option
@common
def list_promises(env: Env, state: str | None, prefix: str | None, parent: str | None,
                  tags: dict[str, Any], limit: int, cursor: int, as_json: bool) -> None:
    """List promises in creation order, one per line.

    When more match than --limit, the last line (or "cursor" in JSON) says where
    the next page starts.

    \b
    Example:
      runner promises list --state pending --prefix order-42
      runner promises list --state pending --tag kind=approval
    """
    data = report.listing(open_existing(env), state=State(state) if state else None, parent=parent,
                          prefix=prefix, limit=limit, cursor=cursor, tags=tags)
    emit(data, as_json, views.promise_list(data))
    if not as_json and data["cursor"] is not None:
        click.echo(f"more: --cursor {data['cursor']}")


def _tags(given: tuple[str, ...]) -> dict[str, Any]:
    """--tag KEY=VALUE options as a mapping; `kind=approval` is text, `n=1` the number 1."""
    tags: dict[str, Any] = {}
    for item in given:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--tag")
        try:
            tags[key] = json.loads(raw)
        except ValueError:
            tags[key] = raw
    return tags


@promises.command("get")
@click.argument("promise_id", metavar="ID")
@json_option
@common
def get_promise(env: Env, promise_id: str, as_json: bool) -> None:
    """Show one promise: state, function, args, value or error, times, attempt, worker.

    \b
    Example:
      runner promises get order-42.3 --json
    """
    data = report.detail(open_existing(env), promise_id)
    emit(data, as_json, views.promise_detail(data))


@promises.command("resolve")
@click.argument("promise_id", metavar="ID")
@click.option("--value", default="null", show_default=True, metavar="JSON", help="The value, as JSON.")
@json_option
@common
def resolve(env: Env, promise_id: str, value: str, as_json: bool) -> None:
    """Resolve a pending promise with a value; a workflow awaiting it resumes.

    A settled promise is never changed: settling it again exits 2 and names its state.

    \b
    Example:
      runner promises resolve approval-1.0 --value '"yes"'
    """
    parsed = parse_json(value, "--value")
    store = open_existing(env)
    settle.resolve(store, promise_id, parsed)
    _settled(store, promise_id, as_json)


@promises.command("reject")
@click.argument("promise_id", metavar="ID")
@click.option("--error", "message", required=True, metavar="MSG", help="The error message.")
@click.option("--type", "type_name", default="Rejected", show_default=True,
              help="Error type an awaiting workflow raises (a builtin such as ValueError stays itself).")
@json_option
@common
def reject(env: Env, promise_id: str, message: str, type_name: str, as_json: bool) -> None:
    """Reject a pending promise; a workflow awaiting it gets the error.

    A settled promise is never changed: settling it again exits 2 and names its state.

    \b
    Example:
      runner promises reject approval-1.0 --error "budget exceeded"
    """
    store = open_existing(env)
    settle.reject(store, promise_id, message, type_name)
    _settled(store, promise_id, as_json)


@promises.command("cancel")
@click.argument("promise_id", metavar="ID")
@click.option("--reason", default=settle.CANCEL_REASON, show_default=True)
@json_option
@common
def cancel(env: Env, promise_id: str, reason: str, as_json: bool) -> None:
    """Cancel a pending promise and every pending promise below it.

    A workflow awaiting a cancelled promise raises runner.errors.Canceled. Cancelling
    a run's root ends the run: `runner invoke` waiting on it exits 1.

    \b
    Example:
      runner promises cancel order-42
    """
    store = open_existing(env)
    _, canceled = settle.cancel(store, promise_id, reason)
    _settled(store, promise_id, as_json, canceled)


@promises.command("retry")
@click.argument("promise_id", metavar="ID")
@json_option
@common
def retry(env: Env, promise_id: str, as_json: bool) -> None:
    """Resume a parked workflow: one whose replay took another path than its store records.

    Run it once the code is fixed. The workflow replays from the top; the children it
    had settled are read back, never run again. A supervisor resumes every parked
    workflow when it starts, too.

    \b
    Example:
      runner promises retry order-42
    """
    store = open_existing(env)
    parked.resume(store, promise_id)
    if as_json:
        click.echo(to_json(report.detail(store, promise_id)))
    else:
        click.echo(f"{promise_id} resumed: it replays when a worker claims it")


def _settled(store: PromiseStore, promise_id: str, as_json: bool, canceled: list[str] | None = None) -> None:
    data = report.detail(store, promise_id)
    if canceled is not None:
        data["canceled_descendants"] = canceled
    if as_json:
        click.echo(to_json(data))
        return
    line = Text.assemble(f"{promise_id} ", views.state(data["state"]))
    if canceled:
        line.append(f" with {len(canceled)} pending descendants")
    views.show([line])
