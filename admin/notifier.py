"""The webhook notifier: a signed JSON POST when an actor (or one of its ordering keys) blocks, and
another when it unblocks, retried with backoff until the receiver takes it.

    python -m admin notify            # one process per deployment (compose service `notify`)

How it works, every ADMIN_NOTIFY_INTERVAL_SECONDS:

1. It holds a lease (a document in the `notifier_lease` collection, renewed each round, taken
   over LEASE_SECONDS after its holder stopped renewing). Only the holder works: a second
   `notify` process, started by mistake or as a standby, waits, so a deployment sends each
   notification from one place however many console workers or notifier replicas run.
2. It reads the current blocks (Ledger.blocks(): each blocked actor and blocked ordering key
   with its message, since when and the error) and compares them with the blocks it has seen,
   kept in the `notifier_blocks` collection. A new block gets a `blocked` notification; a block
   that is gone gets an `unblocked` one (with how the message ended: done, cancelled...). The
   notification is written down before anything is sent.
3. It sends what is due, the `blocked` of a block always before its `unblocked`. A failure (not a
   2xx, a timeout) is retried after ADMIN_NOTIFY_RETRY_SECONDS, doubling each time up to
   MAX_RETRY_DELAY_SECONDS, and dropped (logged as an error) after ADMIN_NOTIFY_GIVE_UP_HOURS.

What a restart keeps: the blocks seen and the notifications owed are in the store, so a restarted
notifier neither announces a known block again nor forgets an unsent or failing notification.
Delivery is at least once: if the process dies after the receiver answered 2xx but before the
answer is recorded, that one notification is sent again; receivers deduplicate on its id
(X-Fifoq-Delivery, also `id` in the body). A block that starts and ends entirely while no
notifier runs is never seen, hence not notified; one that is still there when it starts is.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from admin import timefmt, webhook
from admin.notify_settings import NotifySettings, url_variable
from backend.errors import FifoqError
from backend.ledger import as_aware, utcnow
from backend.store import ASCENDING, RETURN_AFTER, DuplicateKey, Store

log = logging.getLogger(__name__)

BLOCKS = "notifier_blocks"
LEASE = "notifier_lease"
LEASE_SECONDS = 30.0
MAX_RETRY_DELAY_SECONDS = 600.0
KEEP_DAYS = 30  # ended blocks with nothing left to send are forgotten after this long
EVENTS = ("blocked", "unblocked")
PENDING, SENT, DROPPED, SKIPPED = "pending", "sent", "dropped", "skipped"
_IDS = uuid.UUID("6c0f1f55-3a55-4f8e-9d1b-5b0c8a9e7f21")


def block_id(block: dict[str, Any]) -> str:
    """The same block (actor, key, message, since) always has the same id: blocking again on the
    same message keeps `since`, a new block of the same message gets a new one."""
    parts = [block["actor"], block.get("key") or "", block["message_id"], timefmt.iso(block.get("since")) or ""]
    return uuid.uuid5(_IDS, "\x1f".join(parts)).hex


def retry_delay(settings: NotifySettings, attempts: int) -> float:
    """Named backoff schedule: retry_seconds, then doubling, capped at MAX_RETRY_DELAY_SECONDS."""
    return min(settings.retry_seconds * 2 ** max(0, attempts - 1), MAX_RETRY_DELAY_SECONDS)


class Notifier:
    def __init__(self, ledger: Any, store: Store, settings: NotifySettings, *, owner: str | None = None,
                 clock: Callable[[], datetime] = utcnow, session: Any = None) -> None:
        self.ledger = ledger
        self.store = store
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.session = session or webhook.session()
        self.leader = False
        self.counts = {(e, o): 0 for e in EVENTS for o in (SENT, "failed", DROPPED)}
        with store.op() as db:
            db[BLOCKS].create_index([("ended_at", ASCENDING)], name="ended_at")
            db[BLOCKS].create_index([("due_at", ASCENDING)], name="due_at", sparse=True)

    # -- one round ---------------------------------------------------------------------------
    def tick(self) -> int:
        """Take or keep the lease, note new and ended blocks, send what is due. Returns the number
        of notifications sent this round (0 when another notifier holds the lease)."""
        now = self.clock()
        if not self._lease(now):
            return 0
        self.observe(now)
        return self.send_due()

    def observe(self, now: datetime) -> None:
        current = {block_id(b): b for b in self.ledger.blocks()}
        with self.store.op() as db:
            open_ids = {d["_id"] for d in db[BLOCKS].find({"ended_at": None}, {"_id": 1})}
            for bid in sorted(set(current) - open_ids):
                self._new_block(db, bid, current[bid], now)
            for bid in sorted(open_ids - set(current)):
                self._ended(db, bid, now)
            db[BLOCKS].delete_many({"ended_at": {"$lt": now - timedelta(days=KEEP_DAYS)}, "due_at": None})

    def _new_block(self, db: Any, bid: str, block: dict[str, Any], now: datetime) -> None:
        target = self.settings.target(block["actor"])
        err = block.get("error") or {}
        doc = {
            "_id": bid, "actor": block["actor"], "key": block.get("key"), "message_id": block["message_id"],
            "seq": block.get("seq"), "since": block.get("since"), "seen_at": now, "ended_at": None, "outcome": None,
            "error": {"type": err.get("type"), "message": err.get("message")},
            "blocked": self._event(target is not None, now), "unblocked": None,
            "due_at": now if target is not None else None,
        }
        try:
            db[BLOCKS].insert_one(doc)
        except DuplicateKey:  # another notifier noted it a moment before (a lease hand-over)
            return
        if target is None:
            log.info("actor=%s message=%s blocked; no notification (%s or ADMIN_NOTIFY_URL not set, or off)",
                     block["actor"], block["message_id"], url_variable(block["actor"]))
        else:
            log.info("actor=%s key=%s message=%s blocked since %s: notifying %s", block["actor"], block.get("key"),
                     block["message_id"], timefmt.iso(block.get("since")), target.shown_url)

    def _ended(self, db: Any, bid: str, now: datetime) -> None:
        doc = db[BLOCKS].find_one({"_id": bid})
        if doc is None:
            return
        try:
            outcome = self.ledger.message(doc["message_id"]).get("status")
        except FifoqError:
            outcome = None  # the message is gone (manual clean-up)
        target = self.settings.target(doc["actor"])
        db[BLOCKS].update_one({"_id": bid, "ended_at": None},
                              {"$set": {"ended_at": now, "outcome": outcome, "unblocked": self._event(target is not None, now),
                                        "due_at": now if target is not None else doc.get("due_at")}})
        log.info("actor=%s key=%s message=%s unblocked (%s)", doc["actor"], doc.get("key"), doc["message_id"], outcome)

    @staticmethod
    def _event(send: bool, now: datetime) -> dict[str, Any]:
        return {"status": PENDING if send else SKIPPED, "attempts": 0, "next_at": now, "first_at": now,
                "sent_at": None, "last_error": None}

    # -- deliveries ----------------------------------------------------------------------------
    def send_due(self) -> int:
        sent = 0
        now = self.clock()
        with self.store.op() as db:
            due = list(db[BLOCKS].find({"due_at": {"$ne": None, "$lte": now}}).sort("due_at", ASCENDING).limit(100))
        for doc in due:
            for event in EVENTS:
                state = doc.get(event)
                if state is None or state["status"] != PENDING:
                    continue
                if as_aware(state["next_at"]) > now:
                    break  # keep the order: nothing after an event that waits for its retry
                if self._send(doc, event, state, now):
                    sent += 1
                    continue
                break
            self._reschedule(doc["_id"])
            if not self._lease(self.clock()):
                break  # lost the lease mid-round (a very slow receiver): the new holder goes on
        return sent

    def _send(self, doc: dict[str, Any], event: str, state: dict[str, Any], now: datetime) -> bool:
        target = self.settings.target(doc["actor"])
        if target is None:  # the configuration changed since: nothing to send any more
            self._set(doc["_id"], event, {"status": SKIPPED})
            return True
        attempt = state["attempts"] + 1
        delivery = f"{doc['_id']}.{event}"
        body = webhook.body_of(self.payload(doc, event, attempt, now))
        result = webhook.deliver(target, event, delivery, body, self.settings.timeout_seconds, self.session)
        if result.ok:
            self._set(doc["_id"], event, {"status": SENT, "attempts": attempt, "sent_at": self.clock(),
                                          "last_error": None})
            self.counts[(event, SENT)] += 1
            log.info("actor=%s message=%s %s notification %s delivered to %s (%s, attempt %d)", doc["actor"],
                     doc["message_id"], event, delivery, target.shown_url, result.detail, attempt)
            return True
        first = as_aware(state.get("first_at")) or now
        if now - first >= timedelta(hours=self.settings.give_up_hours):
            self._set(doc["_id"], event, {"status": DROPPED, "attempts": attempt, "last_error": result.detail})
            self.counts[(event, DROPPED)] += 1
            log.error("actor=%s message=%s %s notification %s dropped after %d attempts over %s: %s", doc["actor"],
                      doc["message_id"], event, delivery, attempt, timefmt.duration((now - first).total_seconds()),
                      result.detail)
            return True  # dropped: the next event of the block may go
        delay = retry_delay(self.settings, attempt)
        self._set(doc["_id"], event, {"attempts": attempt, "next_at": now + timedelta(seconds=delay),
                                      "last_error": result.detail})
        self.counts[(event, "failed")] += 1
        log.warning("actor=%s message=%s %s notification %s to %s failed (%s, attempt %d): retry in %s", doc["actor"],
                    doc["message_id"], event, delivery, target.shown_url, result.detail, attempt,
                    timefmt.duration(delay))
        return False

    def payload(self, doc: dict[str, Any], event: str, attempt: int, now: datetime) -> dict[str, Any]:
        """The JSON body (docs/operations.md lists its fields)."""
        since, ended = as_aware(doc.get("since")), as_aware(doc.get("ended_at"))
        public = self.settings.public_url
        return {
            "id": f"{doc['_id']}.{event}",
            "event": event,
            "actor": doc["actor"],
            "key": doc.get("key"),
            "message_id": doc["message_id"],
            "seq": doc.get("seq"),
            "since": since,
            "ended_at": ended if event == "unblocked" else None,
            "blocked_seconds": timefmt.elapsed(since, ended) if event == "unblocked" else None,
            "outcome": doc.get("outcome") if event == "unblocked" else None,
            "error": doc.get("error"),
            "message_url": f"{public}/messages/{doc['message_id']}" if public else None,
            "attempt": attempt,
            "sent_at": now,
        }

    def _set(self, bid: str, event: str, fields: dict[str, Any]) -> None:
        with self.store.op() as db:
            db[BLOCKS].update_one({"_id": bid}, {"$set": {f"{event}.{k}": v for k, v in fields.items()}})

    def _reschedule(self, bid: str) -> None:
        """due_at: when the block's next pending event may go; None when nothing is owed."""
        with self.store.op() as db:
            doc = db[BLOCKS].find_one({"_id": bid})
            if doc is None:
                return
            nxt = next((s["next_at"] for s in (doc.get(e) for e in EVENTS) if s and s["status"] == PENDING), None)
            db[BLOCKS].update_one({"_id": bid}, {"$set": {"due_at": nxt}})

    def pending(self) -> int:
        with self.store.op() as db:
            return db[BLOCKS].count_documents({"due_at": {"$ne": None}})

    # -- the lease -------------------------------------------------------------------------------
    def _lease(self, now: datetime) -> bool:
        until = now + timedelta(seconds=LEASE_SECONDS)
        try:
            with self.store.op() as db:
                db[LEASE].find_one_and_update(
                    {"_id": "notifier", "$or": [{"owner": self.owner}, {"until": {"$lt": now}}]},
                    {"$set": {"owner": self.owner, "until": until, "renewed_at": now}},
                    upsert=True, return_document=RETURN_AFTER)
            held = True
        except DuplicateKey:  # someone else holds a live lease
            held = False
        if held != self.leader:
            log.info("notifier %s %s the lease", self.owner, "took" if held else "does not hold")
        self.leader = held
        return held

    def release(self) -> None:
        """Give the lease up (on a clean stop), so that a standby takes over at once."""
        with self.store.op() as db:
            db[LEASE].delete_one({"_id": "notifier", "owner": self.owner})
        self.leader = False

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Rounds every interval until `stop` is set; a store or ledger failure is logged and the
        round retried at the next interval."""
        log.info("notifier %s started (every %s)", self.owner, timefmt.duration(self.settings.interval_seconds))
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except (FifoqError, ConnectionError, EOFError) as exc:
                    log.error("notifier: ledger or store unavailable, retrying in %s: %s",
                              timefmt.duration(self.settings.interval_seconds), exc)
                stop.wait(self.settings.interval_seconds)
        finally:
            try:
                self.release()
            except (FifoqError, ConnectionError, EOFError):
                pass
            log.info("notifier %s stopped", self.owner)


class NotifierCollector(Collector):
    """The notifier's own metrics, for `python -m admin notify --metrics-port`:
    fifoq_notifier_configured (1 when a receiver is configured), fifoq_notifier_leader (1 while
    this process holds the lease), fifoq_notifier_pending
    (blocks with a notification owed), fifoq_notifier_deliveries_total{event,outcome}."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("fifoq_notifier_configured", "1 when a webhook receiver is configured "
                                "(ADMIN_NOTIFY_URL or ADMIN_NOTIFY_URL_<ACTOR>).",
                                value=1.0 if self.notifier.settings.configured else 0.0)
        yield GaugeMetricFamily("fifoq_notifier_leader", "1 while this notifier holds the lease (the one that sends).",
                                value=1.0 if self.notifier.leader else 0.0)
        try:
            yield GaugeMetricFamily("fifoq_notifier_pending", "Blocks with a notification still to send.",
                                    value=float(self.notifier.pending()))
        except (FifoqError, ConnectionError, EOFError) as exc:
            log.warning("notifier metrics: store unavailable: %s", exc)
        total = CounterMetricFamily("fifoq_notifier_deliveries", "Delivery attempts by event and outcome (sent, "
                                    "failed: retried later, dropped: given up).", labels=["event", "outcome"])
        for (event, outcome), n in sorted(self.notifier.counts.items()):
            total.add_metric([event, outcome], float(n))
        yield total
