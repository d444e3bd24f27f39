"""JSON log lines on stdout: one object per line, for the webhook and for uvicorn itself.

Owns: the line format (time, level, message, then the event's own fields; a traceback only
when one is attached, which the server does only for internal errors) and uvicorn's logging
configuration, so every line the process writes parses as JSON.
Does not: decide what to log (server.py).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import orjson

LOGGER_NAME = "cache_injector"
logger = logging.getLogger(LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...fields}`; fields come from extra={"fields"}."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_config(level: str = "INFO") -> dict[str, Any]:
    """logging.config.dictConfig for uvicorn and us; uvicorn's access log is off (each review
    has its own line, with more in it)."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stdout",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stdout": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stdout"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            LOGGER_NAME: {"handlers": ["stdout"], "level": level, "propagate": False},
        },
    }


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line: `message` names the event; fields carry its data."""
    logger.log(level, message, extra={"fields": fields})
