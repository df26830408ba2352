"""Wiring for a backend process: settings, store, ledger, audit, subscriptions, emitter, operations."""
from __future__ import annotations

import logging
import threading
from typing import Any

from backend.audit import AuditLog
from backend.emit import Emitter, Event
from backend.ledger import Ledger
from backend.operations import Operations
from backend.relay import Relay
from backend.retention import Retention, retention_interval
from backend.settings import Settings
from backend.store import Store
from backend.subscriptions import Subscriptions

log = logging.getLogger(__name__)


def open_ledger(settings: Settings) -> Ledger:
    """The ledger a connector process uses: MongoDB, the in-process store, or an embedded ledger
    served by another process (MONGODB_URL=embedded://..., see backend.ledger_server)."""
    if settings.mongodb_url.startswith("embedded://"):
        from backend import ledger_server

        return ledger_server.connect(settings.mongodb_url)
    return Ledger(Store.open(settings))


class Backend:
    """What an application holds to emit events.

    >>> be = Backend(Settings.from_env())
    >>> be.subscriptions.actor("payment", schema={"type": "object", "required": ["amount"]})
    >>> be.subscriptions.subscribe("payment", "tour.booked")
    >>> be.declare()
    >>> be.emit_event("tour.booked", {"amount": 120})
    """

    def __init__(self, settings: Settings, store: Store | None = None, subscriptions: Subscriptions | None = None) -> None:
        self.settings = settings
        self.store: Store | None
        if store is None and settings.mongodb_url.startswith("embedded://"):
            # Another process owns the embedded store and serves it (backend.ledger_server).
            from backend import ledger_server

            self.store = None
            self.ledger = ledger_server.connect(settings.mongodb_url)
            self.audit = ledger_server.connect_audit(settings.mongodb_url)
        else:
            opened = store or Store.open(settings)
            self.store = opened
            self.ledger = Ledger(opened)
            self.audit = AuditLog(opened)
        self.subscriptions = subscriptions or Subscriptions()
        self.emitter = Emitter(settings, self.ledger, self.subscriptions)
        self.operations = Operations(settings, self.ledger, self.audit)
        self._relay: Relay | None = None
        self._relay_stop = threading.Event()

    def declare(self) -> None:
        self.emitter.declare()

    def emit_event(self, name: str, payload: Any, *, correlation_id: str | None = None,
                   idempotency_key: str | None = None) -> list[str]:
        return self.emitter.emit_event(name, payload, correlation_id=correlation_id, idempotency_key=idempotency_key)

    def emit_many(self, events: list[Event | tuple[str, Any]]) -> list[list[str]]:
        return self.emitter.emit_many(events)

    def start_relay(self, interval: float = 1.0) -> Relay:
        """Publish what the broker did not confirm, and apply retention (FIFOQ_RETENTION), in
        the background."""
        if self._relay is None:
            self._relay = Relay(self.settings, self.ledger)
            self._relay.start(self._relay_stop, interval)
            if self.store is not None:
                Retention(self.settings, self.ledger, self.store.col("audit")).start(
                    self._relay_stop, retention_interval(self.settings.retention))
        return self._relay

    def close(self) -> None:
        self._relay_stop.set()
        if self._relay is not None:
            self._relay.close()
        self.emitter.close()
