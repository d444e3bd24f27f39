"""logs.line() writes the line logs.event() would, without the logging machinery."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from webhook.serve import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Our logger configured as `serve` configures it, writing into a buffer."""
    saved = logs.logger.handlers[:], logs.logger.level, logs.logger.propagate
    logging.config.dictConfig(logs.log_config())
    buffer = io.StringIO()
    (handler,) = logs.logger.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        logs.logger.handlers[:], logs.logger.level, logs.logger.propagate = saved
        logs.logger.disabled = False


FIELDS = {"event": "review", "uid": "u-1", "name": 'we"ird é', "ms": 0.25, "patchOps": 6}


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_line_is_the_line_event_writes(stream: io.StringIO, level: int) -> None:
    logs.event("review", level, **FIELDS)
    logs.line("review", dict(FIELDS), level)
    slow, fast = (json.loads(text) for text in stream.getvalue().splitlines())
    # The same fields in the same order; the clock moved between the two lines at most.
    assert list(fast) == list(slow)
    assert {k: v for k, v in fast.items() if k != "time"} == {
        k: v for k, v in slow.items() if k != "time"
    }
    assert len(fast["time"]) == len(slow["time"]) == len("2026-01-01T00:00:00.000Z")
    assert fast["time"][:16] == slow["time"][:16] or fast["time"] > slow["time"]


def test_line_honours_the_level(stream: io.StringIO) -> None:
    logs.logger.setLevel(logging.WARNING)
    logs.line("review", dict(FIELDS))
    logs.line("malformed review", {"event": "rejected"}, logging.WARNING)
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["malformed review"]
    assert lines[0]["level"] == "warning"


def test_line_without_our_handler_goes_through_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=logs.LOGGER_NAME):
        logs.line("review", dict(FIELDS))
    (record,) = caplog.records
    assert record.getMessage() == "review"
    assert getattr(record, "fields", None) == FIELDS  # added by extra=, unknown to LogRecord


@pytest.mark.parametrize("now", [0.0, 1764756000.0009, 1764756000.9999, 1764756059.5, 2e9 + 0.123])
def test_the_clock_writes_time_as_the_formatter_does(now: float) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created = now
    expected = json.loads(logs.JsonFormatter().format(record))["time"]
    assert logs._Clock().stamp(now).decode() == expected
