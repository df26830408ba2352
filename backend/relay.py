"""The outbox relay: publishes messages that are in the ledger but not confirmed by the broker.

emit_event leaves a message `pending` when the broker is down or does not confirm in time. The
relay walks each lane from its `pub` mark (every number below it is published or settled), in
sequence order, publishes the pending messages older than FIFOQ_RELAY_MIN_AGE, and moves the
mark over what is done: a run costs the lane documents plus the messages emitted since the last
run, never the lane's history. A message may reach the queue twice (the first publish did arrive,
its confirm did not): connectors recognise a number they have passed.

One actor's broker refusal (permissions, a queue declared with other arguments) holds back only
that actor: it is retried with its own backoff while the other actors' messages go out.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from backend import backoff
from backend.broker import Publisher
from backend.errors import FifoqError
from backend.ledger import Ledger, as_aware
from backend.settings import Settings
from backend.values import Envelope, QueueType, Status

log = logging.getLogger(__name__)

BATCH = 500
# An actor whose queue the broker refuses is tried again 1, 2, 4 ... 30 s later (its own schedule).
REFUSED = backoff.Backoff(first=1.0, factor=2.0, maximum=backoff.RELAY_MAX_SECONDS)


class Relay:
    def __init__(self, settings: Settings, ledger: Ledger, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.publisher = publisher or Publisher(settings, name="fifoq-relay")
        self._refused: dict[str, tuple[float, int]] = {}  # actor -> (retry at, refusals in a row - 1)

    def run_once(self, min_age: float | None = None) -> int:
        """Publish pending messages created at least `min_age` seconds ago (FIFOQ_RELAY_MIN_AGE by
        default, so that emit_event has had its chance). Returns how many were confirmed."""
        age = self.settings.relay_min_age if min_age is None else min_age
        cutoff = self.ledger.now() - timedelta(seconds=age)
        now = time.monotonic()
        qtypes = {a["_id"]: QueueType(a.get("queue_type", self.settings.queue_type.value)) for a in self.ledger.actor_docs()}
        walks: list[_Walk] = []
        for lane in self.ledger.lanes.all():
            if self._refused.get(lane["actor"], (0.0, 0.0))[0] > now:
                continue
            start = max(int(lane.get("pub", 0)), int(lane["w"])) + 1
            top = min(int(lane["next"]) - 1, start + BATCH - 1)
            if start <= top:
                found = self.ledger.by_seqs(lane["actor"], lane["lane"], range(start, top + 1))
                walks.append(_Walk(lane["_id"], start, [found.get(s) for s in range(start, top + 1)]))
        todo = [d for walk in walks for d in walk.docs if d is not None and _unpublished(d) and as_aware(d["created_at"]) <= cutoff]
        confirmed: set[str] = set()
        if todo:
            envs = [Envelope(d["_id"], d["actor"], d["seq"], d["event"], d.get("lane", 0)) for d in todo]
            confirmed = self.publisher.publish(envs, qtypes)
            self.ledger.mark_published(sorted(confirmed))
            self._note_refusals({d["actor"] for d in todo}, now)
            log.info("relay published %d of %d pending messages", len(confirmed), len(todo))
        for walk in walks:
            # The mark moves over the published or settled prefix of what was read.
            mark = walk.start - 1
            for doc in walk.docs:
                if doc is None or (_unpublished(doc) and doc["_id"] not in confirmed):
                    break
                mark = doc["seq"]
            if mark >= walk.start:
                self.ledger.lanes.published_upto(walk.lane_id, mark)
        return len(confirmed)

    def _note_refusals(self, actors: set[str], now: float) -> None:
        refused = self.publisher.refused & actors
        for actor in actors - refused:
            self._refused.pop(actor, None)
        for actor in refused:
            wait = REFUSED.delay(self._refused.get(actor, (0.0, -1))[1] + 1)
            self._refused[actor] = (now + wait, self._refused.get(actor, (0.0, -1))[1] + 1)
            log.error("actor=%s the broker refuses its queue: its messages wait in the ledger (next try in %.0fs)", actor, wait)

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Loop until `stop` is set, backing off (backoff.relay) while the broker is unreachable."""
        schedule = backoff.relay(interval)
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
                failures, delay = 0, interval
            except FifoqError as exc:
                delay = schedule.delay(failures)
                failures += 1
                log.warning("relay: %s (next try in %.1fs)", exc, delay)
            stop.wait(delay)

    def start(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        t = threading.Thread(target=self.run_forever, args=(stop, interval), name="fifoq-relay", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.publisher.close()


def _unpublished(doc: dict[str, Any]) -> bool:
    return doc["status"] == Status.PENDING.value and doc.get("published_at") is None


@dataclass
class _Walk:
    lane_id: str
    start: int
    docs: list[dict[str, Any] | None]
