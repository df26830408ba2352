"""The outbox relay: publishes messages that are in the ledger but not confirmed by the broker.

emit_event leaves a message `pending` when the broker is down or does not confirm in time. The
relay publishes pending messages oldest-sequence first per actor and marks them queued. A message
may then reach the queue twice (the first publish did arrive, its confirm did not): connectors
deduplicate by message id, and they never process a sequence number before the previous one.
"""
from __future__ import annotations

import logging
import threading
from datetime import timedelta

from backend.broker import Publisher
from backend.errors import FifoqError
from backend.ledger import Ledger, utcnow
from backend.settings import Settings
from backend.values import Envelope, QueueType

log = logging.getLogger(__name__)

BATCH = 500
BACKOFF_MAX_SECONDS = 30.0


class Relay:
    def __init__(self, settings: Settings, ledger: Ledger, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.publisher = publisher or Publisher(settings, name="fifoq-relay")

    def run_once(self, min_age: float | None = None) -> int:
        """Publish pending messages created at least `min_age` seconds ago (FIFOQ_RELAY_MIN_AGE by
        default, so that emit_event has had its chance). Returns how many were confirmed."""
        age = self.settings.relay_min_age if min_age is None else min_age
        total = 0
        while True:
            docs = self.ledger.pending(created_before=utcnow() - timedelta(seconds=age), limit=BATCH)
            if not docs:
                return total
            qtypes = {
                a["_id"]: QueueType(a.get("queue_type", self.settings.queue_type.value))
                for a in self.ledger.actors({d["actor"] for d in docs})
            }
            envs = [Envelope(d["_id"], d["actor"], d["seq"], d["event"], d.get("lane", 0)) for d in docs]
            confirmed = self.publisher.publish(envs, qtypes)
            self.ledger.mark_queued([d["_id"] for d in docs if d["_id"] in confirmed])
            total += len(confirmed)
            log.info("relay published %d of %d pending messages", len(confirmed), len(docs))
            if len(confirmed) < len(docs):
                return total

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Loop until `stop` is set, backing off exponentially while the broker is unreachable."""
        delay = interval
        while not stop.is_set():
            try:
                self.run_once()
                delay = interval
            except FifoqError as exc:
                log.warning("relay: %s (next try in %.1fs)", exc, delay)
                delay = min(BACKOFF_MAX_SECONDS, delay * 2)
            stop.wait(delay)

    def start(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        t = threading.Thread(target=self.run_forever, args=(stop, interval), name="fifoq-relay", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.publisher.close()
