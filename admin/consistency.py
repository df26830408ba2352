"""Ledger versus broker: does the actor's queue hold what the ledger says it should?

Used by admin.board for every line of the overview and the actor page (`consistency`), and
through it by the JSON API, /metrics and the `divergence` alert (admin.alerts). It allows for the
management API's statistics lag and reports only a divergence that persists (admin.watch).
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from admin.alerts import AlertRules
from admin.watch import Sample, request_sample
from backend.ledger import utcnow
from backend.values import Status

_FROM_REQUEST: Any = object()


def consistency(counts: dict[str, int], queue: dict[str, Any] | None, broker_error: str | None, *,
                actor: str | None = None, ledger: Any = None, now: datetime | None = None,
                sample: Sample | object | None = _FROM_REQUEST) -> dict[str, Any]:
    """Compare what the ledger says sits in the broker with what the broker reports.

    A queued message must be in the queue (ready, or unacked while a consumer holds it). A pending
    message may already be there (its confirm not recorded yet) and a processing one is unacked
    while its handler runs, so the broker's ready+unacked must fall within
    [queued, queued + pending + processing]. Below: messages the ledger expects are missing from the
    broker (the relay republishes pending ones, not queued ones: look). Above: duplicates or
    envelopes of settled messages, which consumers ack without running the handler.

    The management API's figures are up to `broker_lag_seconds` old (ADMIN_BROKER_STATS_LAG_SECONDS)
    while the ledger's are current, so a gap that the lag explains is not a divergence: messages
    that arrived within the lag (counted in the ledger, `ledger.created_since(...)`, only when the
    broker is short) may be missing from the broker's figures, and those settled within it (the
    broker's ack rate times the lag) may still be counted there. What remains is reported as
    `settling` until it has persisted in every sample for ADMIN_ALERT_PERSIST_SECONDS (admin.watch),
    and only then as `missing`, `extra` or `no_queue` (ok False, the `divergence` alert).

    Args:
        actor, ledger: to count the recent arrivals and to remember the divergence; without them
            the lag is not allowed for.
        sample: the console's watch for this request (default: admin.watch.request_sample());
            None reports a divergence beyond the lag at once.
    """
    now = now or utcnow()
    if sample is _FROM_REQUEST:
        sample = request_sample()
    assert sample is None or isinstance(sample, Sample)
    lag = broker_lag(sample)
    queued = counts.get(Status.QUEUED.value, 0)
    pending = counts.get(Status.PENDING.value, 0)
    processing = counts.get(Status.PROCESSING.value, 0)
    out: dict[str, Any] = {
        "ledger_queued": queued,
        "ledger_pending": pending,
        "ledger_processing": processing,
        "expected_min": queued,
        "expected_max": queued + pending + processing,
        "broker_ready": None,
        "broker_unacked": None,
        "broker_total": None,
        "broker_lag_seconds": lag,
        "tolerance": 0,
        "divergent_for_seconds": None,
    }
    if broker_error:
        return dict(out, status="unknown", ok=None, explanation=f"broker figures unavailable: {broker_error}")
    if queue is None:
        if out["expected_max"] == 0:
            _settled(sample, actor)
            return dict(out, status="ok", ok=True, explanation="no queue on the broker and nothing expected in it")
        return _persisting(out, sample, actor, "no_queue",
                           "the ledger expects messages in the broker but the actor has no queue there")
    ready, unacked = queue["messages_ready"], queue["messages_unacknowledged"]
    out.update(broker_ready=ready, broker_unacked=unacked)
    if ready is None or unacked is None:
        return dict(out, status="unknown", ok=None, explanation="the broker has no statistics for this queue yet")
    total = ready + unacked
    out["broker_total"] = total
    if total < out["expected_min"]:
        short = queued - total
        arrived = _arrived_since(ledger, actor, now, lag)
        out["tolerance"] = arrived
        if short <= arrived:
            _settled(sample, actor)
            return dict(out, status="ok", ok=True,
                        explanation=f"the broker's figures (up to {lag:g} s old) do not count yet {short} of the "
                                    f"{arrived} message(s) that arrived since")
        return _persisting(out, sample, actor, "missing",
                           f"the broker holds {total} but the ledger has {queued} queued: {short} missing from the queue")
    if total > out["expected_max"]:
        extra = total - out["expected_max"]
        rate = max(queue.get("ack_rate") or 0.0, queue.get("deliver_rate") or 0.0)
        out["tolerance"] = math.ceil(rate * lag)
        if extra <= out["tolerance"]:
            _settled(sample, actor)
            return dict(out, status="ok", ok=True,
                        explanation=f"the broker's figures (up to {lag:g} s old) still count {extra} message(s) "
                                    f"settled since (about {rate:.1f}/s)")
        return _persisting(out, sample, actor, "extra",
                           f"the broker holds {total}, more than the ledger's {out['expected_max']} open: "
                           "duplicates or settled envelopes (consumers skip them)")
    _settled(sample, actor)
    return dict(out, status="ok", ok=True, explanation="the broker holds what the ledger expects")


def broker_lag(sample: Sample | object | None = _FROM_REQUEST) -> float:
    """How old the management API's figures may be (ADMIN_BROKER_STATS_LAG_SECONDS), from the
    console's watch for this request (the default) or `sample`, else from the environment."""
    if sample is _FROM_REQUEST:
        sample = request_sample()
    return sample.watch.broker_lag_seconds if isinstance(sample, Sample) else AlertRules().broker_lag_seconds


def _arrived_since(ledger: Any, actor: str | None, now: datetime, lag: float) -> int:
    """The actor's messages created within the lag: the broker's figures may not count them yet."""
    if ledger is None or actor is None or lag <= 0:
        return 0
    return int(ledger.created_since(actor, now - timedelta(seconds=lag)))


def _settled(sample: Sample | None, actor: str | None) -> None:
    if sample is not None and actor is not None:
        sample.held_for(f"divergence:{actor}", False)


def _persisting(out: dict[str, Any], sample: Sample | None, actor: str | None, status: str,
                explanation: str) -> dict[str, Any]:
    """A gap the lag does not explain: a divergence once it has persisted, `settling` until then."""
    if sample is None or actor is None:
        return dict(out, status=status, ok=False, explanation=explanation)
    flagged, held = sample.persistent(f"divergence:{actor}", True)
    out["divergent_for_seconds"] = held
    if flagged:
        return dict(out, status=status, ok=False, explanation=f"{explanation} (for {held:.0f} s)")
    return dict(out, status="settling", ok=True,
                explanation=f"{explanation}, for {held:.0f} s: the broker's figures lag, so this is reported only if it "
                            f"lasts {sample.watch.persist_seconds:g} s")
