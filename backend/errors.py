"""One error tree for the whole project. Adapters translate driver errors into these."""
from __future__ import annotations

from typing import Any


class FifoqError(Exception):
    """Base of every error this project raises on purpose."""

    http_status = 500


class ConfigError(FifoqError):
    """A setting is missing or invalid: raised at start-up."""


class ValidationError(FifoqError):
    """Bad input from a caller: a clear message, nothing written."""

    http_status = 400

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class PayloadTooLarge(ValidationError):
    http_status = 413


class SchemaViolation(ValidationError):
    """The payload does not match an actor's JSON Schema. details: [{actor, path, message}]."""

    http_status = 422


class NotFound(FifoqError):
    http_status = 404


class UnknownActor(NotFound):
    pass


class UnknownMessage(NotFound):
    pass


class Conflict(FifoqError):
    """The operation does not apply to the current state (e.g. editing a done message)."""

    http_status = 409


class StoreError(FifoqError):
    """The ledger (MongoDB) failed or is unreachable. A write that raises this was not applied,
    unless the error is an OutcomeUnknown."""

    http_status = 503


class OutcomeUnknown(StoreError):
    """A write was sent but its result is unknown (connection lost, timeout, primary stepped down,
    write concern not satisfied in time): it may or may not have been applied. Every ledger write
    is conditional, so the caller retries it or reads the document to find out."""


class DuplicateKey(StoreError):
    """A unique index refused a write (MongoDB error 11000). `failed` lists the positions of the
    refused documents of an insert_many (empty for a single-document write)."""

    http_status = 409

    def __init__(self, message: str, failed: list[int] | None = None) -> None:
        super().__init__(message)
        self.failed = failed or []


class BrokerUnavailable(FifoqError):
    """RabbitMQ is unreachable or closed the connection."""

    http_status = 503


class TransientError(Exception):
    """Raised by a handler for a failure worth retrying in place (timeout, 503...).

    The runtime retries the same message with bounded exponential backoff, keeping its position,
    and blocks the actor only when the retries are exhausted.
    """
