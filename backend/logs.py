"""Logging set-up for entry points (libraries only call logging.getLogger(__name__)).

Every record carries `correlation_id`: the correlation id of the message being processed on this
thread (the connector runtime binds it around each message, the handler's own log lines
included), or "-" outside one. The format puts it beside the actor and message id that the log
lines themselves name.
"""
from __future__ import annotations

import contextvars
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] cid=%(correlation_id)s %(message)s"

_correlation: contextvars.ContextVar[str] = contextvars.ContextVar("fifoq_correlation_id", default="-")
_installed = False


@contextmanager
def correlation(correlation_id: str | None) -> Iterator[None]:
    """Log lines written in this block (on this thread or context) carry `correlation_id`."""
    token = _correlation.set(correlation_id or "-")
    try:
        yield
    finally:
        _correlation.reset(token)


def current_correlation() -> str:
    return _correlation.get()


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


def configure(level: str | None = None) -> None:
    name = (level or os.environ.get("LOG_LEVEL", "INFO")).upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SystemExit(f"LOG_LEVEL={name!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    install()
    logging.basicConfig(level=name, format=FORMAT)
    logging.getLogger("pika").setLevel(logging.WARNING)
