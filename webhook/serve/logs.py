"""JSON log lines on stdout: one object per line, for the webhook and for uvicorn itself.

Owns: the line format (time, level, message, then the event's own fields; a traceback only
when one is attached, which the server does only for internal errors) and uvicorn's logging
configuration, so every line the process writes parses as JSON.
Does not: decide what to log (admission.py and server.py).

A review's line is written by `line()`, the same text as `event()` without the logging
machinery (a LogRecord, the formatter, datetime per line): 14 µs -> 3 µs a line, with one line
per review on the path the API server waits on.
"""

from __future__ import annotations

import datetime
import logging
import time
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


class _Clock:
    """`time` as JsonFormatter writes it, the date and second formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = b""

    def stamp(self, now: float) -> bytes:
        # To the microsecond first, as datetime.fromtimestamp() rounds, then cut to the ms.
        second, micros = divmod(round(now * 1_000_000), 1_000_000)
        if second != self.second:
            self.second = second
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self.text = moment.strftime("%Y-%m-%dT%H:%M:%S").encode()
        return self.text + b".%03dZ" % (micros // 1000)


_CLOCK = _Clock()


def _json_handler() -> logging.StreamHandler[Any] | None:
    """The handler log_config() installs on our logger, when it is the one in place."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and isinstance(
            handler.formatter, JsonFormatter
        ):
            return handler
    return None


def line(message: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
    """`event(message, level, **fields)`, written straight to the JSON handler's stream.

    Falls back to `event()` where log_config() is not in place (tests capturing records, a
    caller's own logging set-up), so every line still goes where logging sends it.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _json_handler()
    if handler is None:
        event(message, level, **fields)
        return
    head = b'{"time":"%s","level":"%s","logger":"%s","message":%s,' % (
        _CLOCK.stamp(time.time()),
        logging.getLevelName(level).lower().encode(),
        LOGGER_NAME.encode(),
        orjson.dumps(message),
    )
    data = orjson.dumps(fields, default=str)
    text = ((head + data[1:]) if len(data) > 2 else (head[:-1] + b"}")).decode() + "\n"
    with handler.lock:  # type: ignore[union-attr]
        handler.stream.write(text)
        handler.stream.flush()
