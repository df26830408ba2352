"""Logging set-up for entry points (libraries only call logging.getLogger(__name__))."""
from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"


def configure(level: str | None = None) -> None:
    name = (level or os.environ.get("LOG_LEVEL", "INFO")).upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SystemExit(f"LOG_LEVEL={name!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    logging.basicConfig(level=name, format=FORMAT)
    logging.getLogger("pika").setLevel(logging.WARNING)
