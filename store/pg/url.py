"""A PostgreSQL store's URL: which schema it names, and how to show it without its password."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from ..errors import StoreUnavailable

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "runner"
# A schema name is also spliced into channel names (63 bytes at most): plain identifiers only.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def is_url(location: str) -> bool:
    """Whether a store location names a PostgreSQL database rather than a directory."""
    return location.startswith(SCHEMES)


def redact(text: str) -> str:
    """`text` with the password of every PostgreSQL URL in it replaced by ***.

    Everything that shows a location (logs, errors, reprs, `runner status`) goes
    through this, so a password given in the URL is never printed.
    """
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def split(url: str, schema: str | None = None) -> tuple[str, str]:
    """(the URL to connect with, the schema to use): `?schema=NAME` is ours, not libpq's."""
    base, _, given = url.partition("?")
    query = parse_qsl(given, keep_blank_values=True)
    named = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    chosen = schema or (named[-1] if named else DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.fullmatch(chosen):
        raise StoreUnavailable(f"invalid schema name {chosen!r} in {redact(url)}: "
                               "use lower-case letters, digits and _ (at most 40)")
    return base + (f"?{urlencode(rest)}" if rest else ""), chosen
