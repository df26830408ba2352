"""Prometheus metrics of the message path: emitted, processed, failed, handler latency.

One `PipelineMetrics` per process, registered on a `CollectorRegistry` the caller owns (never the
library's global default: tests and embedded uses build as many as they like).

    metrics = PipelineMetrics()                  # its own registry
    instrument_emitter(backend.emitter, metrics)  # fifoq_messages_emitted_total{actor}
    runtime = Runtime(..., on_event=metrics.on_event)  # processed/failed/retried + histogram

The console exports what it reads from the ledger and the management API (blocked actors, queue
depth, alerts) from its own collector: admin.metrics.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from backend.errors import DuplicateKey

log = logging.getLogger(__name__)

# Handler durations: a no-op handler takes well under a millisecond, an external API call seconds.
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class PipelineMetrics:
    """Counters and the handler-latency histogram, labelled by actor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.emitted = Counter(
            "fifoq_messages_emitted", "Messages stored in the ledger by emit_event (one per subscriber).",
            ["actor"], registry=self.registry,
        )
        self.processed = Counter(
            "fifoq_messages_processed", "Messages whose handler succeeded.", ["actor"], registry=self.registry,
        )
        self.failed = Counter(
            "fifoq_messages_failed", "Handler failures that blocked the actor.", ["actor"], registry=self.registry,
        )
        self.retried = Counter(
            "fifoq_messages_retried", "Transient handler errors retried in place.", ["actor"], registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "fifoq_handler_seconds", "Handler duration per attempt (done, failed or retried).", ["actor"],
            buckets=HANDLER_BUCKETS, registry=self.registry,
        )

    def count_emitted(self, docs: Sequence[dict[str, Any]]) -> None:
        per_actor: dict[str, int] = {}
        for doc in docs:
            per_actor[doc["actor"]] = per_actor.get(doc["actor"], 0) + 1
        for actor, n in per_actor.items():
            self.emitted.labels(actor=actor).inc(n)

    def on_event(self, kind: str, actor: str, doc: dict[str, Any], seconds: float) -> None:
        """The connector runtime's hook (connectors.runtime.Runtime(on_event=...)).

        Runs on the actor's worker thread after the ledger write: cheap, never raises.
        """
        try:
            self.handler_seconds.labels(actor=actor).observe(seconds)
            if kind == "done":
                self.processed.labels(actor=actor).inc()
                log.debug("actor=%s message=%s seq=%s correlation=%s done in %.4fs",
                          actor, doc.get("_id"), doc.get("seq"), doc.get("correlation_id"), seconds)
            elif kind == "failed":
                self.failed.labels(actor=actor).inc()
                log.info("actor=%s message=%s seq=%s correlation=%s failed after %.4fs",
                         actor, doc.get("_id"), doc.get("seq"), doc.get("correlation_id"), seconds)
            elif kind == "retried":
                self.retried.labels(actor=actor).inc()
                log.info("actor=%s message=%s seq=%s correlation=%s transient error after %.4fs",
                         actor, doc.get("_id"), doc.get("seq"), doc.get("correlation_id"), seconds)
        except Exception:  # metrics must never stop a worker
            log.exception("actor=%s metrics hook failed", actor)


class _CountingLedger:
    """Wraps the emitter's ledger: counts the messages each successful insert stored.

    Counting at insert time is what "emitted" means: once the insert returned the messages are
    in the ledger and will be delivered (published now or by the relay). A refused insert
    (DuplicateKey, retried by the emitter under fresh sequence numbers) raises and counts nothing.
    """

    def __init__(self, ledger: Any, metrics: PipelineMetrics) -> None:
        self._ledger = ledger
        self._metrics = metrics

    def insert(self, docs: Sequence[dict[str, Any]]) -> None:
        try:
            self._ledger.insert(docs)
        except DuplicateKey as exc:  # an ordered insert stored what came before the refusal
            self._metrics.count_emitted(docs[: min(exc.failed)] if exc.failed else [])
            raise
        self._metrics.count_emitted(docs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def instrument_emitter(emitter: Any, metrics: PipelineMetrics) -> None:
    """Count fifoq_messages_emitted_total{actor} for everything `emitter` stores (idempotent).

    The Emitter has no hook of its own; this wraps the ledger it writes through, and only for
    that emitter (the runtime and the console keep the plain ledger).
    """
    if isinstance(emitter.ledger, _CountingLedger):
        return
    emitter.ledger = _CountingLedger(emitter.ledger, metrics)


# -- activity per minute, read from the ledger (the console's charts) --------------------------
def ledger_activity(ledger: Any, since: datetime) -> dict[str, dict[str, dict[str, int]]] | None:
    """Per actor and per minute since `since`: handler attempts done and failed, messages created
    and messages settled (done or cancelled): {"done"|"failed"|"created"|"settled": {actor:
    {"YYYY-MM-DDTHH:MM": n}}}, from the lanes' counters (Ledger.activity: O(lanes), whatever
    the number of messages stored). None when the ledger is a proxy that cannot provide it."""
    activity = getattr(ledger, "activity", None)
    if activity is None:
        return None
    result: dict[str, dict[str, dict[str, int]]] = activity(since)
    return result
