"""The `runner` command group and what every command shares: options, errors, JSON.

The commands live in the modules beside this one and attach themselves to `cli`;
the package imports them all, so `runner.cli:main` sees every command.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from runner.store import (
    InvalidId,
    NotFound,
    NotSerializable,
    PromiseStore,
    StoreError,
    StoreIOError,
)

from .. import logs
from ..apps import load_apps
from ..errors import AppError, BadInput, Interrupted, Parked, RegistryError, RunnerError
from ..location import StoreLocation
from ..registry import Registry, registry
from . import jsonout, views

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_STORE = 3
_INPUT_ERRORS = (BadInput, RegistryError, AppError, InvalidId, NotSerializable, NotFound)


@dataclass
class Env:
    """What every command shares: where the store is and which app modules to load."""

    store: StoreLocation
    apps: tuple[str, ...]

    def open(self, *, load: bool = True) -> tuple[PromiseStore, Registry]:
        if load:
            self.load()
        return self.store.open(), registry

    def load(self) -> Registry:
        """Import the app modules, so their functions are registered by name."""
        load_apps(self.apps)
        return registry


def _store_location(ctx: click.Context, param: click.Parameter, value: str) -> StoreLocation:
    """An empty path would name the current directory (Path('') is '.'): never a store by accident."""
    if not value:
        raise click.BadParameter("the store path is empty", ctx=ctx, param=param)
    return StoreLocation(value)


def common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes, declared once."""

    @click.option("--store", "store_dir", envvar="RUNNER_STORE", default=".runner", show_default=True,
                  callback=_store_location,
                  help="Store directory, or a postgresql:// URL (env RUNNER_STORE).")
    @click.option("--app", "apps", multiple=True,
                  help="Module that registers functions (repeatable; default: RUNNER_APP or pyproject).")
    @click.option("--log-level", type=click.Choice(logs.LEVELS), default="warning", show_default=True)
    @click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True)
    @functools.wraps(fn)
    def wrapper(store_dir: StoreLocation, apps: tuple[str, ...], log_level: str, log_format: str,
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
        except BrokenPipeError:  # the reader went away (`| head`): main() stops quietly
            raise
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


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (shape in README.md).")


def open_existing(env: Env) -> PromiseStore:
    """The store, which must exist already: looking must not create one."""
    if not env.store.exists():
        fail(f"no store at {env.store} (set --store or RUNNER_STORE)", EXIT_STORE)
    return env.open(load=False)[0]


def emit(data: Any, as_json: bool, lines: Any) -> None:
    """`--json` prints the gathered dict as it is; a person gets the drawn lines."""
    if as_json:
        click.echo(to_json(data))
    else:
        views.show(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Durable fan-out on one machine: every spawn and every result is a promise on disk.

    \b
    Example:
      runner invoke notify_all --arg '{"order_id": "o-1"}'
    """


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
