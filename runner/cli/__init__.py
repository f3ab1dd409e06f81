"""The `runner` command line: the click group in group.py, one module per command group.

Importing a command module attaches its commands to the group, so this package imports
them all; `runner.cli:main` (the installed script) and `python -m runner` run it.
"""

from . import chaos, overview, promises, run  # noqa: F401  (each attaches its commands)
from .group import cli, main

__all__ = ["cli", "main"]
