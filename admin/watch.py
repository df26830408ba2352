"""Since when a condition has held, remembered across requests, console workers and restarts.

The console's checks compare the ledger with the broker's statistics, which the management API
refreshes every few seconds: a sample taken during activity can disagree for a moment (a queue
"missing" messages that just arrived, no consumer for the seconds after a resume). A condition is
therefore flagged only once it has held in every sample over some time (admin.alerts:
ADMIN_ALERT_PERSIST_SECONDS). Each condition that holds is one small document of the
`console_watch` collection, in the console's store, so that every worker of the console (several
gunicorn workers) and the next console process see the same history:

    {_id: "divergence:payment", since: <first sample that saw it>, last_seen: <latest sample>}

and none while it does not hold. Samples further apart than the gap allowed start over: nobody
saw whether the condition held in between.

A request reads the collection once (request_sample(), kept in flask.g) and writes only when a
condition starts, stops, or its last_seen grows older than REFRESH_SECONDS.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import current_app, g, has_app_context

from backend.ledger import as_aware, utcnow
from backend.store import Store

log = logging.getLogger(__name__)

COLLECTION = "console_watch"
REFRESH_SECONDS = 5.0
MIN_GAP_SECONDS = 30.0


class Watch:
    """The conditions of one console (app.extensions["fifoq_watch"])."""

    def __init__(self, store: Store, persist_seconds: float, broker_lag_seconds: float) -> None:
        self.store = store
        self.persist_seconds = persist_seconds
        # How old the management API's figures may be (admin.consistency's tolerance).
        self.broker_lag_seconds = broker_lag_seconds
        # Samples further apart than this do not prove that the condition held in between.
        self.max_gap_seconds = max(persist_seconds, MIN_GAP_SECONDS)

    def sample(self, now: datetime | None = None) -> Sample:
        with self.store.op() as db:
            docs = {d["_id"]: d for d in db[COLLECTION].find({})}
        return Sample(self, docs, now or utcnow())


class Sample:
    """One look at every condition, at one time."""

    def __init__(self, watch: Watch, docs: dict[str, dict[str, Any]], now: datetime) -> None:
        self.watch = watch
        self.docs = docs
        self.now = now

    def held_for(self, key: str, holding: bool) -> float | None:
        """Record whether the condition `key` holds now; return for how many seconds it has held
        without interruption (0 at the first sample that sees it), or None when it does not hold."""
        doc = self.docs.get(key)
        with self.watch.store.op() as db:
            coll = db[COLLECTION]
            if not holding:
                if doc is not None:
                    coll.delete_one({"_id": key, "since": doc["since"]})
                    self.docs.pop(key, None)
                return None
            last_seen = as_aware(doc["last_seen"]) if doc else None
            if last_seen is None or (self.now - last_seen).total_seconds() > self.watch.max_gap_seconds:
                doc = {"_id": key, "since": self.now, "last_seen": self.now}
                coll.replace_one({"_id": key}, doc, upsert=True)
                self.docs[key] = doc
                return 0.0
            assert doc is not None  # last_seen came from it
            if (self.now - last_seen).total_seconds() > REFRESH_SECONDS:
                coll.update_one({"_id": key}, {"$set": {"last_seen": self.now}})
                doc = dict(doc, last_seen=self.now)
                self.docs[key] = doc
        return max(0.0, (self.now - as_aware(doc["since"])).total_seconds())

    def persistent(self, key: str, holding: bool) -> tuple[bool, float | None]:
        """(held long enough to be flagged, seconds held so far)."""
        held = self.held_for(key, holding)
        return held is not None and held >= self.watch.persist_seconds, held


def request_sample() -> Sample | None:
    """The current request's sample of the app's watch (read once per request), or None outside
    the console (a script calling admin.board directly): then nothing persists and a condition is
    reported as soon as it is seen."""
    if not has_app_context():
        return None
    watch: Watch | None = current_app.extensions.get("fifoq_watch")
    if watch is None:
        return None
    if "fifoq_watch_sample" not in g:
        g.fifoq_watch_sample = watch.sample()
    return g.fifoq_watch_sample

