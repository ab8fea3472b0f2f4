"""Logging setup: text or JSON lines on stderr, written by a thread off the event loop.

Records go through a :class:`~logging.handlers.QueueHandler` so that a slow
stderr (a pipe, a terminal, a log shipper) never blocks the event loop; the
listener thread formats and writes them. Fields passed in ``extra`` (``job_id``,
``attempt``, ``smtp_code``, ``duration_ms``, ``outcome``...) are kept as JSON keys.
Every line carries the process id, for processes that share one log
(``hypercorn --workers N``).
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO

from .config import LogFormat

LOGGER_NAME = "trimail"
#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        payload.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRS
        )
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class _NoCopyQueueHandler(logging.handlers.QueueHandler):
    """Hands the record over untouched: formatting happens in the listener thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def configure_logging(
    log_format: LogFormat = LogFormat.TEXT, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Route the ``trimail`` loggers to ``stream`` (stderr) through a writer thread.

    Calling it again replaces the previous setup; the listener is flushed at exit.
    """
    global _listener
    if _listener is not None:
        _listener.stop()
    output = logging.StreamHandler(stream or sys.stderr)
    formatter = JSONFormatter() if log_format is LogFormat.JSON else logging.Formatter(TEXT_FORMAT)
    output.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, output)
    _listener.start()
    atexit.register(flush_logging)
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [_NoCopyQueueHandler(records)]
    logger.setLevel(level)
    logger.propagate = False


def flush_logging() -> None:
    """Write out every record queued so far and stop the writer thread; idempotent."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
