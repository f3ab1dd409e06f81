"""Logging set-up, done once at the entry point: one line per event, with the pid."""

from __future__ import annotations

import json
import logging
import time

LEVELS = ["debug", "info", "warning", "error"]
FORMATS = ["text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": record.created, "level": record.levelname.lower(), "pid": record.process,
                           "logger": record.name, "message": record.getMessage()})


def configure(level: str = "warning", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s pid=%(process)d %(message)s",
                                      "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
