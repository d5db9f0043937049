"""Log lines as text or JSON (``--log-format``), with the request's fields as their own keys.

The message loop logs one line per hook error (ERROR, with the traceback) and per immediate
response (INFO), and, with an observer, one access line per stream (DEBUG, logger
``extproc.access``). Each carries ``extra`` fields (:data:`FIELDS`); the JSON formatter writes
them as keys of one object per line, the text formatter leaves them to the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .errors import ServeError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Keys a JSON line may carry beyond time, level, logger and message; stable and documented.
FIELDS = ("request_id", "processor", "phase", "outcome", "status", "grpc_code",
          "duration_ms", "phases", "hooks", "exit_code")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC, ms), ``level``, ``logger``, ``pid``,
    ``message``, the :data:`FIELDS` a line has, and ``exception`` (the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.__dict__.get("where"):  # the user's frames of an error reported by message
            line["exception"] = record.__dict__["where"]
        return json.dumps(line, default=str)


def setup(level: str = "info", format: str = "text") -> None:
    """Log to stderr at ``level`` as ``format`` (text or json), replacing earlier handlers."""
    if format not in FORMATS:
        raise ServeError(f"log format must be text or json, got {format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def current_format() -> str:
    """``json`` when the root logger writes JSON lines (:func:`setup`), else ``text``: what a
    child process that logs on its own (pyvoy's Envoy) is told to do."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return "json"
    return "text"
