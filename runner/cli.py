"""The `runner` command: thin wrappers over the modules that do the work.

Every error a user can cause becomes one line on stderr and a documented exit
code (see README.md): 0 resolved, 1 rejected, 2 bad usage or input,
3 the store or the supervisor cannot serve, 4 the run is parked.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from runner.store import (
    DEFAULT_LEASE,
    DirStore,
    InvalidId,
    NotFound,
    NotSerializable,
    Promise,
    State,
    StoreError,
    StoreIOError,
    open_store,
)

from . import jsonout, logs, progress
from .apps import load_apps
from .durations import Duration
from .errors import AppError, BadInput, Interrupted, Parked, RegistryError, RunnerError, SupervisorRunning
from .invoke import submit, wait
from .registry import Registry, registry
from .supervisor import Supervisor

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_STORE = 3
_INPUT_ERRORS = (BadInput, RegistryError, AppError, InvalidId, NotSerializable, NotFound)


@dataclass
class Env:
    """What every command shares: where the store is and which app modules to load."""

    store_dir: Path
    apps: tuple[str, ...]

    def open(self, *, load: bool = True) -> tuple[DirStore, Registry]:
        if load:
            load_apps(self.apps)
        return open_store(str(self.store_dir)), registry


def _store_path(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """An empty path would name the current directory (Path('') is '.'): never a store by accident."""
    if not value:
        raise click.BadParameter("the store path is empty", ctx=ctx, param=param)
    return Path(value)


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes, declared once."""

    @click.option("--store", "store_dir", envvar="RUNNER_STORE", default=".runner", show_default=True,
                  type=click.Path(), callback=_store_path, help="Store directory (env RUNNER_STORE).")
    @click.option("--app", "apps", multiple=True,
                  help="Module that registers functions (repeatable; default: RUNNER_APP or pyproject).")
    @click.option("--log-level", type=click.Choice(logs.LEVELS), default="warning", show_default=True)
    @click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True)
    @functools.wraps(fn)
    def wrapper(store_dir: Path, apps: tuple[str, ...], log_level: str, log_format: str,
                **kwargs: Any) -> Any:
        logs.configure(log_level, log_format)
        try:
            return fn(Env(store_dir, apps), **kwargs)
        except _INPUT_ERRORS as exc:
            fail(str(exc), EXIT_USAGE)
        except (Interrupted, Parked) as exc:
            fail(str(exc), exc.exit_code)
        except (RunnerError, StoreError) as exc:
            fail(str(exc), EXIT_STORE)
        except OSError as exc:  # a path the system refuses (too long, a loop of links, ...)
            fail(os_error_line(exc), EXIT_STORE)

    return wrapper


def os_error_line(exc: OSError) -> str:
    """An OSError on one readable line: a path of thousands of characters is shortened."""
    name = str(exc.filename) if exc.filename is not None else ""
    if len(name) > 80:
        name = f"{name[:40]}...{name[-37:]} ({len(name)} characters)"
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {name}" if name else reason


def fail(message: str, code: int) -> None:
    click.echo(f"runner: error: {message}", err=True)
    sys.exit(code)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{what} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None
    except RecursionError:
        raise BadInput(f"{what} is nested too deeply to read") from None


def to_json(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON for output: bytes and non-finite floats as tagged objects (jsonout.py)."""
    return jsonout.dumps(value, indent=indent)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Durable fan-out on one machine: every spawn and every result is a promise on disk.

    \b
    Example:
      runner invoke notify_all --arg '{"order_id": "o-1"}'
    """


@cli.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Branches each worker runs at once.")
@click.option("--lease", type=Duration(), default=DEFAULT_LEASE, show_default=True,
              help="How long a claim outlives its worker's last heartbeat (every third of it), "
                   "when nobody saw the worker die.")
@common
def start(env: Env, workers: int, concurrency: int, lease: float) -> None:
    """Run the supervisor and its workers until Ctrl-C or SIGTERM (a second one kills).

    \b
    Example:
      runner start --workers 4
    """
    store, reg = env.open()
    # Refuse before announcing ourselves: a second supervisor says one thing, that it cannot run.
    if not store.lock_supervisor():
        raise SupervisorRunning(f"a supervisor is already running on {env.store_dir}")
    click.echo(f"runner: supervisor {os.getpid()} on {env.store_dir} with {workers} workers "
               f"x {concurrency} (Ctrl-C drains, a second Ctrl-C kills)", err=True)
    Supervisor(store, env.store_dir, reg, workers=workers, concurrency=concurrency, lease=lease).run()
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
    store, reg = env.open()
    root = promise_id if promise_id is not None else f"{func}-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    deadline = None if timeout is None else time.time() + timeout  # children inherit it
    promise = submit(store, reg, func, values, root, timeout=deadline)
    if no_wait:
        click.echo(to_json({"id": promise.id, "state": promise.state.value}) if as_json else promise.id)
        return
    # Live progress only for a person at a terminal; pipes and --json get the plain result.
    with progress.for_invoke(store, promise.id, enabled=not as_json and sys.stdout.isatty()) as view:

        def settled(done: Promise) -> None:  # shown before an embedded supervisor drains
            view.finish()
            show_result(done, time.monotonic() - started, as_json)
            sys.stdout.flush()

        promise = wait(store, env.store_dir, reg, promise.id, workers=workers, concurrency=concurrency,
                       on_change=view.update, on_settled=settled)
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


def main() -> None:
    # Integers are data of any size here (stored, shown and parsed whole), not the
    # denial-of-service risk the interpreter's default digit limit guards a server against.
    sys.set_int_max_str_digits(0)
    try:
        # Not standalone, so a usage error is ours to print: one line like every other error.
        code = cli.main(prog_name="runner", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(exc.format_message() + hint, EXIT_USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        fail("aborted", EXIT_REJECTED)
    except StoreIOError as exc:  # raised outside a command's own handling, e.g. at exit
        fail(str(exc), EXIT_STORE)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as click would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # a bug of ours: still one line, with where to find the rest
        logging.getLogger("runner").debug("unexpected error", exc_info=True)
        fail(f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
             "rerun with --log-level debug for the traceback", EXIT_STORE)
    sys.exit(code if isinstance(code, int) else 0)


# Commands kept in modules of their own attach themselves to `cli` when imported.
from . import chaos_cmd, inspect_cmd  # noqa: E402, F401
