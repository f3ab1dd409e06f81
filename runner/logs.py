"""Logging set-up, done once at the entry point: one line per event with time, level, pid
and, where there is one, the promise id.

The promise id comes from, in order: `extra={"promise_id": ...}`; a message written
"%s: ..." with the id first (the worker's convention), whose prefix moves into the
field; the promise the calling code runs for (so user code's own log lines carry it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from .context import current

LEVELS = ["debug", "info", "warning", "error"]
FORMATS = ["text", "json"]


class PromiseId(logging.Filter):
    """Gives every record a `promise_id` attribute (None when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "promise_id", None) is None:
            record.promise_id = None
            args = record.args
            if isinstance(record.msg, str) and record.msg.startswith("%s: ") and isinstance(args, tuple) \
                    and args and isinstance(args[0], str):
                record.promise_id, record.msg, record.args = args[0], record.msg[4:], args[1:]
            else:
                with contextlib.suppress(RuntimeError):  # not inside a running function
                    record.promise_id = current().id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": record.created, "level": record.levelname.lower(), "pid": record.process,
                "promise": getattr(record, "promise_id", None), "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s pid=%(process)d%(promise)s %(message)s",
                         "%Y-%m-%d %H:%M:%S")
        self.converter = time.localtime

    def format(self, record: logging.LogRecord) -> str:
        promise_id = getattr(record, "promise_id", None)
        record.promise = f" promise={promise_id}" if promise_id is not None else ""
        return super().format(record)


def configure(level: str = "warning", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(PromiseId())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
