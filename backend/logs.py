"""The one logging set-up of every entry point (libraries only call logging.getLogger(__name__)).

Every record carries `correlation_id`: the correlation id of the message being processed on this
thread (the connector runtime binds it around each message, the handler's own log lines
included), of the console request being served (admin.requests binds it), or "-" outside one.

LOG_LEVEL sets the level (each entry point has its default: INFO, WARNING for the operator
command line and the benchmarks) and LOG_FORMAT the format: `text`, one line per record with
`cid=...`, or `json`, one JSON object per line (python-json-logger) for a log shipper.
"""
from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from backend.settings import LogSettings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] cid=%(correlation_id)s %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(threadName)s %(correlation_id)s %(message)s"
JSON_RENAMES = {"levelname": "level", "name": "logger", "threadName": "thread"}
QUIET = {"pika": logging.WARNING}  # libraries whose INFO lines say nothing an operator needs

_correlation: contextvars.ContextVar[str] = contextvars.ContextVar("fifoq_correlation_id", default="-")
_installed = False


@contextmanager
def correlation(correlation_id: str | None) -> Iterator[None]:
    """Log lines written in this block (on this thread or context) carry `correlation_id`."""
    token = bind(correlation_id)
    try:
        yield
    finally:
        _correlation.reset(token)


def bind(correlation_id: str | None) -> contextvars.Token[str]:
    """Set the correlation id of this context; `unbind(token)` restores the previous one."""
    return _correlation.set(correlation_id or "-")


def unbind(token: contextvars.Token[str]) -> None:
    _correlation.reset(token)


def install() -> None:
    """Give every log record a `correlation_id` attribute (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.correlation_id = _correlation.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]  # generic in typeshed, not at run time
else:
    _StreamHandler = logging.StreamHandler


class _StderrHandler(_StreamHandler):
    """Writes to the sys.stderr of the moment (as logging.lastResort does), so that a test
    runner swapping sys.stderr never leaves the handler on a closed stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp="time")
    return logging.Formatter(FORMAT)


def configure(default_level: str = "INFO", *, env: Mapping[str, str] | None = None,
              stream: TextIO | None = None) -> LogSettings:
    """Configure the root logger from LOG_LEVEL and LOG_FORMAT (os.environ when env is None).

    Idempotent: a second call replaces the handler the first one installed and leaves other
    handlers (a test runner's) alone. Raises ConfigError on a bad value, naming the variable.
    """
    settings = LogSettings.from_env(env)
    install()
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler(stream)
    handler.setFormatter(formatter(settings.format))
    root.addHandler(handler)
    root.setLevel(settings.level or default_level)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(max(level, root.level))
    return settings
