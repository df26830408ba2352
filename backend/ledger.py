"""The ledger: every persisted message, every actor and every lane, in MongoDB.

Each method is one conditional single-document operation (or a read): no multi-document
transaction, and no correctness decision that rests on two writes both happening. See
docs/delivery.md for the data model, the transition table (backend/transitions.py) and the
invariants.

- A message's `_id` is "<actor>.<lane>.<seq>": its place in its lane is its identity, so the same
  number can never be stored twice (a late emitter meets the gap's tombstone), and a worker reads
  a range of its lane by id. `(actor, event_id)` is unique too: a retried emit stores nothing twice.
- Whether an actor or a key is blocked is not stored beside the messages: it is derived from them
  (the lane's first open message is failed; the key has an entry in its lane's custody).
- Operator actions are one write of intent on the message (replay requested, cancelled); the
  lane's worker carries them out.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, overload

from backend import transitions as tr
from backend.errors import Conflict, DuplicateKey, OutcomeUnknown, UnknownActor, UnknownMessage
from backend.lanes import Lanes, Tally, lane_id
from backend.ledger_search import HIDDEN_FIELDS, LedgerSearch, matches_text, search_fields
from backend.ledger_views import LedgerViews
from backend.store import ASCENDING, DESCENDING, RETURN_AFTER, Store, Update
from backend.values import ActorRunState, ErrorInfo, Status

log = logging.getLogger(__name__)

ATTEMPT_LOG_SIZE = 50
GAP_EVENT = "(sequence gap)"
# Indexes of the first ledger format (before lanes and derived blocks), dropped on sight.
OBSOLETE_INDEXES = {"actor_lane_seq", "actor_key_status_seq", "actor_status_seq", "status_created", "event_created",
                    "correlation", "finished", "created"}


def utcnow() -> datetime:
    # Millisecond precision: what BSON keeps, so values read back compare equal.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@overload
def as_aware(value: datetime) -> datetime: ...


@overload
def as_aware(value: None) -> None: ...


def as_aware(value: datetime | None) -> datetime | None:
    """pymongo without tz_aware returns naive UTC datetimes."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def message_id(actor: str, lane: int, seq: int) -> str:
    return f"{actor}.{int(lane)}.{int(seq)}"


def new_event_id() -> str:
    return uuid.uuid4().hex


def new_event_ids(n: int) -> list[str]:
    """n random (version 4) UUIDs in hex, as new_event_id, from one read of the system's random
    source instead of one read each (a batch of 100 events needs 200: ids and correlation ids)."""
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[i:i + 16], version=4).hex for i in range(0, 16 * n, 16)]


def scope_key(doc: dict[str, Any]) -> str:
    """The ordering key a message waits on in a keyed lane; messages that came through a
    subscription without a key share the key ""."""
    return doc.get("key") or ""


def run_state(actor_doc: dict[str, Any]) -> ActorRunState:
    if actor_doc.get("blocked"):
        return ActorRunState.BLOCKED
    if actor_doc.get("paused"):
        return ActorRunState.PAUSED
    return ActorRunState.RUNNING


class Ledger(LedgerViews, LedgerSearch):
    """Messages, actors and lanes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.messages = store.col("messages")
        self.actors_col = store.col("actors")
        self.lanes = Lanes(store)
        self.ensure_indexes()

    # -- set-up ---------------------------------------------------------------------------
    def ensure_indexes(self) -> None:
        """Every query the ledger runs has an index whose prefix is its filter then its sort
        (tests/test_indexes.py checks each query against this list)."""
        m = self.messages
        m.create_index([("actor", ASCENDING), ("event_id", ASCENDING)], unique=True, name="actor_event")
        for name in OBSOLETE_INDEXES & set(m.index_information()):
            m.drop_index(name)
        # The console lists one actor's messages, newest (or oldest) first, optionally by status
        # or event, or those with every word of a payload search (`terms`, multikey: see
        # backend/ledger_search.py); the trace finds one correlation id across actors. Everything
        # else is by id.
        m.create_index([("actor", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)], name="actor_created")
        m.create_index([("actor", ASCENDING), ("terms", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
                       name="actor_terms_created")
        m.create_index([("actor", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
                       name="actor_status_created")
        m.create_index([("actor", ASCENDING), ("event", ASCENDING), ("created_at", DESCENDING), ("seq", DESCENDING)],
                       name="actor_event_created")
        m.create_index([("correlation_id", ASCENDING), ("created_at", ASCENDING)], name="correlation_created", sparse=True)
        self.lanes.ensure_indexes()

    def now(self) -> datetime:
        """The database's clock (leases are measured on it)."""
        return self.store.now()

    # -- actors ---------------------------------------------------------------------------
    def register_actor(
        self,
        actor: str,
        *,
        queue_type: str,
        schema: dict[str, Any] | None,
        subscriptions: list[dict[str, Any]],
        description: str = "",
        lanes: int = 1,
    ) -> dict[str, Any]:
        """Create the actor's state document and lane documents on first sight; refresh its
        declaration after. `lanes` is fixed on first sight: changing it would move keys to other
        lanes while their messages are in flight."""
        now = utcnow()
        keyed = any(sub.get("ordering_key") for sub in subscriptions)
        doc = self.actors_col.find_one_and_update(
            {"_id": actor},
            {
                "$set": {"schema": schema, "subscriptions": subscriptions, "description": description,
                         "keyed": keyed, "updated_at": now},
                "$setOnInsert": {"lanes": max(1, int(lanes)), "queue_type": queue_type, "created_at": now, "paused": None},
            },
            upsert=True,
            return_document=RETURN_AFTER,
        )
        assert doc is not None
        self.lanes.ensure(actor, int(doc["lanes"]), keyed, now)
        return doc

    def actor_doc(self, actor: str) -> dict[str, Any]:
        """The actor's stored document (declaration, pause), without derived state."""
        doc = self.actors_col.find_one({"_id": actor})
        if doc is None:
            raise UnknownActor(f"unknown actor {actor!r}")
        return doc

    def actor_docs(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if names is None else {"_id": {"$in": list(names)}}
        return list(self.actors_col.find(query).sort("_id", ASCENDING))

    def set_paused(self, actor: str, by: str, reason: str) -> bool:
        """Returns False when the actor was already paused (idempotent)."""
        res = self.actors_col.update_one(
            {"_id": actor, "paused": None}, {"$set": {"paused": {"by": by, "reason": reason, "at": utcnow()}}}
        )
        if res.matched_count == 0:
            self.actor_doc(actor)  # UnknownActor
        return bool(res.modified_count == 1)

    def clear_paused(self, actor: str) -> bool:
        res = self.actors_col.update_one({"_id": actor, "paused": {"$ne": None}}, {"$set": {"paused": None}})
        if res.matched_count == 0:
            self.actor_doc(actor)
        return bool(res.modified_count == 1)

    def allocate(self, actor: str, count: int = 1, lane: int = 0) -> int:
        """Reserve `count` consecutive sequence numbers in one lane; returns the first one."""
        return self.lanes.allocate(actor, lane, count, utcnow())

    # -- storing messages -------------------------------------------------------------------
    @staticmethod
    def new_message(
        actor: str,
        seq: int,
        event: str,
        payload: Any,
        correlation_id: str | None,
        lane: int = 0,
        key: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        now = utcnow()
        return {
            "_id": message_id(actor, lane, seq),
            "actor": actor,
            "lane": lane,
            "seq": seq,
            "key": key,
            "event": event,
            "event_id": event_id or new_event_id(),
            "payload": payload,
            "correlation_id": correlation_id,
            **search_fields(payload, correlation_id, 1),
            "status": Status.PENDING.value,
            "attempts": 0,
            "version": 1,
            "history": [],
            "attempt_log": [],
            "last_error": None,
            "cancelled": None,
            "replay_requested": None,
            "owner": None,
            "lease_until": None,
            "gap": False,
            "created_at": now,
            "updated_at": now,
            "published_at": None,
            "started_at": None,
            "finished_at": None,
            "settled_at": None,
        }

    @staticmethod
    def resequenced(doc: dict[str, Any], seq: int) -> dict[str, Any]:
        """The same message under another sequence number of its lane (a late emitter's number
        was closed as a gap meanwhile)."""
        return dict(doc, seq=seq, _id=message_id(doc["actor"], doc["lane"], seq))

    def insert(self, docs: Sequence[dict[str, Any]]) -> None:
        """Store messages in order. Raises DuplicateKey (its `failed` lists the refused positions:
        with an ordered insert, everything before the first one is stored, nothing after it) or
        OutcomeUnknown (read back to learn what was stored)."""
        if docs:
            self.messages.insert_many(list(docs), ordered=True)

    def stored_events(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """{(actor, event_id): message} for those already stored (a retried emit)."""
        pairs = list(pairs)
        if not pairs:
            return {}
        actors = sorted({a for a, _ in pairs})
        events = sorted({e for _, e in pairs})
        wanted = set(pairs)
        docs = self.messages.find({"actor": {"$in": actors}, "event_id": {"$in": events}},
                                  {"_id": 1, "actor": 1, "event_id": 1, "event": 1, "lane": 1, "seq": 1, "status": 1})
        return {(d["actor"], d["event_id"]): d for d in docs if (d["actor"], d["event_id"]) in wanted}

    def close_gaps(self, actor: str, lane: int, seqs: Iterable[int], reason: str) -> list[int]:
        """Store a cancelled tombstone at each number that was reserved and never stored. The
        number is the tombstone's `_id`: if the real message landed first, the tombstone is
        refused; a message that comes later is refused and its emitter takes a new number.
        Returns the numbers closed now."""
        seqs = sorted(set(int(s) for s in seqs))
        if not seqs:
            return []
        now = utcnow()
        docs = []
        for seq in seqs:
            doc = self.new_message(actor, seq, GAP_EVENT, None, None, lane, None, event_id=f"(gap).{lane}.{seq}")
            doc.update(status=Status.CANCELLED.value, gap=True, finished_at=now, settled_at=now,
                       cancelled={"by": "system", "reason": reason, "at": now})
            docs.append(doc)
        try:
            self.messages.insert_many(docs, ordered=False)
            closed = set(seqs)
        except DuplicateKey as exc:
            closed = set(seqs) - {docs[i]["seq"] for i in exc.failed}
        except OutcomeUnknown:
            closed = {d["seq"] for d in self.by_ids([d["_id"] for d in docs]) if d.get("gap")}
        if closed:
            log.warning("actor=%s lane=%d closed %d sequence gap(s) %s: %s", actor, lane, len(closed),
                        _ranges(sorted(closed)), reason)
        return sorted(closed)

    def mark_published(self, ids: Sequence[str]) -> None:
        """Record the broker's confirms: `published_at` on every message (whatever it has become
        meanwhile: a fast consumer may have run it already), and pending -> queued."""
        if not ids:
            return
        now = utcnow()
        ids = list(ids)
        self.messages.update_many({"_id": {"$in": ids}, "published_at": None}, {"$set": {"published_at": now}})
        self.messages.update_many({"_id": {"$in": ids}, **tr.status_filter("published")},
                                  {"$set": {"status": Status.QUEUED.value, "updated_at": now}})

    # -- reading messages -------------------------------------------------------------------
    def message(self, message_id: str) -> dict[str, Any]:
        if not isinstance(message_id, str):
            raise UnknownMessage("message id must be a string")
        doc = self.messages.find_one({"_id": message_id}, HIDDEN_FIELDS)
        if doc is None:
            raise UnknownMessage(f"unknown message {message_id!r}")
        return doc

    def by_ids(self, ids: Sequence[str], projection: dict[str, int] | None = None) -> list[dict[str, Any]]:
        if not ids:
            return []
        return list(self.messages.find({"_id": {"$in": list(ids)}}, projection))

    def by_seqs(self, actor: str, lane: int, seqs: Iterable[int]) -> dict[int, dict[str, Any]]:
        """{seq: message} for the stored ones among `seqs` of one lane (one read, by id)."""
        ids = [message_id(actor, lane, s) for s in seqs]
        return {d["seq"]: d for d in self.by_ids(ids)}

    def find(
        self,
        *,
        actor: str | None = None,
        status: str | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
        correlation_id: str | None = None,
        skip: int = 0,
        limit: int = 50,
        newest_first: bool = False,
        sort: str | None = None,
        count: bool = True,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of one actor's messages (oldest first unless `newest_first` or sort="newest"),
        filtered, and their total (None when only a longer walk could tell: "more than shown").

        A payload search (`text`) is a query served by an index (Ledger.search, see
        backend/ledger_search.py). Otherwise a lane is a log: the page is read by walking the
        actor's lanes from their newest (or oldest) retained number, by id, in batches, merging
        lanes by creation time. The cost is the messages walked to fill the page (at most
        WALK_CAP), never the actor's history, on MongoDB as on the embedded store. Every filter
        is a plain string/date: callers never pass raw query documents, so no operator can be
        injected. Without an actor, a correlation id is required (Ledger.trace)."""
        newest = (sort or ("newest" if newest_first else "oldest")) == "newest"
        if actor is None:
            if correlation_id is None:
                raise ValueError("find needs an actor or a correlation id")
            docs = self._trace(correlation_id, skip + limit, None)
            docs = [_visible(d) for d in docs if _matches(d, status, event, since, until, text)]
            docs.sort(key=lambda d: (d["created_at"], d["seq"]), reverse=newest)
            return docs[skip:skip + limit], len(docs)
        if text:
            return self.search(str(actor), text, status=status, event=event, since=since, until=until,
                               correlation_id=correlation_id, skip=skip, limit=limit,
                               sort="newest" if newest else "oldest", count=count)
        lanes = self.lanes.of_actor(str(actor))
        walk = LaneWalk(self, lanes, newest, since if newest else None, until if not newest else None, cap=WALK_CAP)

        def predicate(d: dict[str, Any]) -> bool:
            return _matches(d, status, event, since, until, None, correlation_id)

        rows, complete = walk.take(predicate, max(0, skip) + max(1, limit))
        page = rows[max(0, skip):max(0, skip) + max(1, limit)]
        unfiltered = not any((status, event, since, until, correlation_id))
        if not count:
            return page, None
        if unfiltered:
            return page, sum(max(0, int(lane_["next"]) - int(lane_.get("floor", 1))) for lane_ in lanes)
        if complete:
            return page, len(rows)
        return page, None

    def created_since(self, actor: str, since: datetime) -> int:
        """How many of the actor's messages were created at or after `since` (a walk from its
        newest back to that time: the cost is those messages)."""
        walk = LaneWalk(self, self.lanes.of_actor(str(actor)), True, since, None)
        rows, _complete = walk.take(lambda d: as_aware(d["created_at"]) >= since, WALK_CAP)
        return len(rows)

    def trace(self, correlation_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """Every message of one business event (one correlation id) across actors, oldest first."""
        return self._trace(correlation_id, limit, HIDDEN_FIELDS)

    def _trace(self, correlation_id: str, limit: int, projection: dict[str, int] | None) -> list[dict[str, Any]]:
        cur = self.messages.find({"correlation_id": str(correlation_id)}, projection)
        return list(cur.sort([("correlation_id", ASCENDING), ("created_at", ASCENDING)]).limit(max(1, limit)))

    # -- processing transitions (the connector runtime) -------------------------------------
    def claim(self, doc: dict[str, Any], owner: str, lease_seconds: float) -> dict[str, Any] | None:
        """Start an attempt on `doc` (as the caller read it), leased to `owner` until the
        database's clock passes now + lease. Returns the document as it now is (its `attempts` is
        the attempt's fence), or None: the message changed meanwhile (settled, edited, claimed by
        another owner whose lease is live): read it again and decide."""
        now = self.now()
        attempt = int(doc.get("attempts", 0)) + 1
        fields = {"status": Status.PROCESSING.value, "owner": owner, "lease_until": now + timedelta(seconds=lease_seconds),
                  "started_at": now, "updated_at": now, "claimed_from": doc["status"]}
        flt = tr.claim_filter(doc, owner, now)
        try:
            res = self.messages.update_one(flt, {"$set": fields, "$inc": {"attempts": 1}})
            if res.modified_count != 1:
                return None
        except OutcomeUnknown:
            after = self.messages.find_one({"_id": doc["_id"]})
            return after if tr.holds_attempt(after, owner, attempt) else None
        return dict(doc, attempts=attempt, **fields)

    def renew(self, message_id: str, owner: str, attempt: int, lease_seconds: float) -> bool:
        """Extend the lease of the attempt `owner` holds. False: the attempt is no longer ours."""
        now = self.now()
        res = self.messages.update_one(tr.attempt_filter(message_id, owner, attempt),
                                       {"$set": {"lease_until": now + timedelta(seconds=lease_seconds)}})
        return bool(res.matched_count == 1)

    def _settle_update(self, doc: dict[str, Any], owner: str, status: Status, error: ErrorInfo | None,
                       now: datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        fields: dict[str, Any] = {"status": status.value, "finished_at": now, "updated_at": now, "replay_requested": None,
                                  "owner": None, "lease_until": None}
        update: dict[str, Any] = {"$set": fields,
                                  "$push": {"attempt_log": {"$each": [_attempt_entry(doc, now, status.value, error, owner)],
                                                            "$slice": -ATTEMPT_LOG_SIZE}}}
        if error is not None:
            fields["last_error"] = dict(error.to_doc(), at=now, fingerprint=error_fingerprint(error))
            # Since when it blocks: its first failure (absent until then; BSON orders null first).
            update["$min"] = {"failed_since": now}
        else:
            fields["settled_at"] = now
            update["$unset"] = {"failed_since": ""}
        return update

    def settle(self, doc: dict[str, Any], owner: str, error: ErrorInfo | None = None) -> bool:
        """End the attempt `owner` holds on `doc` (doc["attempts"] is its fence): done, or failed
        with `error`. Retried in place on an unknown outcome until the answer is known; True if it
        landed, False if the attempt was not ours any more (taken over: never a success)."""
        status = Status.FAILED if error is not None else Status.DONE
        attempt = int(doc["attempts"])
        update = self._settle_update(doc, owner, status, error)
        while True:
            try:
                res = self.messages.update_one(tr.attempt_filter(doc["_id"], owner, attempt), update)
                if res.modified_count == 1:
                    return True
            except OutcomeUnknown as exc:
                log.warning("actor=%s message=%s settle outcome unknown (%s): reading it back", doc["actor"], doc["_id"], exc)
            after = self.messages.find_one({"_id": doc["_id"]})
            if tr.settled_by(after, owner, attempt, status.value):
                return True
            if not tr.holds_attempt(after, owner, attempt):
                return False

    def settle_and_claim(self, done: dict[str, Any], following: dict[str, Any], owner: str,
                         lease_seconds: float) -> tuple[bool, dict[str, Any] | None]:
        """`done`'s attempt succeeded: settle it and claim `following` (its lane's next message)
        in one round trip (an ordered bulk write). Returns (settled, claimed document or None)."""
        now = self.now()
        attempt = int(done["attempts"])
        claim_fields = {"status": Status.PROCESSING.value, "owner": owner, "lease_until": now + timedelta(seconds=lease_seconds),
                        "started_at": now, "updated_at": now, "claimed_from": following["status"]}
        updates = [
            # One time for both: the next message starts when this one finished, never before.
            Update(tr.attempt_filter(done["_id"], owner, attempt), self._settle_update(done, owner, Status.DONE, None, now)),
            Update(tr.claim_filter(following, owner, now), {"$set": claim_fields, "$inc": {"attempts": 1}}),
        ]
        try:
            modified = self.messages.bulk_update(updates)
        except OutcomeUnknown:
            modified = -1
        if modified == 2:
            return True, dict(following, attempts=int(following.get("attempts", 0)) + 1, **claim_fields)
        # Read both back to learn which landed.
        docs = {d["_id"]: d for d in self.by_ids([done["_id"], following["_id"]])}
        settled = tr.settled_by(docs.get(done["_id"]), owner, attempt, Status.DONE.value)
        if not settled and tr.holds_attempt(docs.get(done["_id"]), owner, attempt):
            settled = self.settle(done, owner)
        nxt = docs.get(following["_id"])
        claimed = nxt if tr.holds_attempt(nxt, owner, int(following.get("attempts", 0)) + 1) else None
        return settled, claimed

    def give_back(self, doc: dict[str, Any], owner: str) -> bool:
        """Return an attempt not started (paused or stopping after the claim) untouched."""
        back = doc.get("claimed_from") or Status.QUEUED.value
        if back == Status.PROCESSING.value:
            back = Status.QUEUED.value
        try:
            res = self.messages.update_one(tr.attempt_filter(doc["_id"], owner, int(doc["attempts"])),
                                           {"$set": {"status": back, "owner": None, "lease_until": None, "updated_at": utcnow()},
                                            "$inc": {"attempts": -1}})
            return bool(res.modified_count == 1)
        except OutcomeUnknown:
            return False  # its lease ends it anyway

    def note_attempt(self, doc: dict[str, Any], owner: str, outcome: str, error: ErrorInfo | None) -> None:
        """Record an attempt that did not settle the message (transient error, interruption)."""
        now = utcnow()
        self.messages.update_one(
            {"_id": doc["_id"], "owner": owner},
            {"$push": {"attempt_log": {"$each": [_attempt_entry(doc, now, outcome, error, owner)], "$slice": -ATTEMPT_LOG_SIZE}},
             "$set": {"last_error": dict(error.to_doc(), at=now) if error else None, "updated_at": now}},
        )

    def restart_attempt(self, doc: dict[str, Any], owner: str) -> dict[str, Any] | None:
        """One more attempt of a message we hold (transient retry): a new fence. None: lost it."""
        attempt = int(doc["attempts"])
        now = utcnow()
        try:
            res = self.messages.update_one(tr.attempt_filter(doc["_id"], owner, attempt),
                                           {"$inc": {"attempts": 1}, "$set": {"started_at": now, "updated_at": now}})
            ok = res.modified_count == 1
        except OutcomeUnknown:
            after = self.messages.find_one({"_id": doc["_id"]})
            ok = tr.holds_attempt(after, owner, attempt + 1)
        return dict(doc, attempts=attempt + 1, started_at=now) if ok else None

    def hold(self, doc: dict[str, Any]) -> None:
        """Show a message as held behind its key (what holds it is its lane's custody)."""
        try:
            self.messages.update_one({"_id": doc["_id"], **tr.status_filter("hold")},
                                     {"$set": {"status": Status.HELD.value, "updated_at": utcnow()}})
        except OutcomeUnknown:
            pass  # cosmetic: custody decides

    # -- lanes: watermark, custody ------------------------------------------------------------
    def lane(self, actor: str, lane: int = 0) -> dict[str, Any]:
        return self.lanes.get(actor, lane)

    def fold(self, lane_doc: dict[str, Any], to: int, passed: Sequence[dict[str, Any]], *,
             custody: dict[str, Any] | None = None, key_blocked: str | None = None) -> dict[str, Any] | None:
        """Move `lane_doc`'s watermark to `to`; `passed` are the messages between (final ones are
        counted now; the one put in custody is counted when it leaves). See Lanes.advance."""
        tally = Tally()
        for doc in passed:
            if custody is not None and doc["seq"] == custody["s"]:
                continue
            _count(tally, doc)
        return self.lanes.advance(lane_doc, to, tally, custody=custody, key_blocked=key_blocked)

    def release_custody(self, lane_doc_id: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """`doc` (settled) leaves its key's custody; counted once."""
        tally = Tally()
        _count(tally, doc)
        return self.lanes.release(lane_doc_id, doc["seq"], tally)

    # -- operator transitions ---------------------------------------------------------------
    def replace_payload(self, doc: dict[str, Any], payload: Any, by: str, diff: str) -> dict[str, Any]:
        """Compare-and-set on the version read by the caller, the search terms of the new payload
        in the same write. Raises Conflict if it changed."""
        now = utcnow()
        version = int(doc.get("version", 1))
        entry = {"version": version + 1, "by": by, "at": now, "previous": doc["payload"], "payload": payload, "diff": diff}
        flt = {"_id": doc["_id"], "version": version, **tr.status_filter("edit")}
        fields = {"payload": payload, "version": version + 1, "updated_at": now,
                  **search_fields(payload, doc.get("correlation_id"), version + 1)}
        update = {"$set": fields, "$push": {"history": entry}}
        try:
            after = self.messages.find_one_and_update(flt, update, return_document=RETURN_AFTER, projection=HIDDEN_FIELDS)
        except OutcomeUnknown:
            after = self.message(doc["_id"])
            if not (after["version"] == version + 1 and after["history"] and after["history"][-1]["at"] == now):
                after = None
        if after is None:
            raise Conflict(f"message {doc['_id']} changed meanwhile (now {self.message(doc['_id'])['status']}); reload and retry")
        return after

    def request_replay(self, message_id: str, by: str) -> dict[str, Any] | None:
        """The failed message's replay intent. Returns the updated document, or None if no
        failed-and-not-yet-requested message matched (retrying after an unknown outcome is safe)."""
        now = utcnow()
        return self.messages.find_one_and_update(
            {"_id": message_id, **tr.status_filter("request_replay"), "replay_requested": None},
            {"$set": {"replay_requested": {"by": by, "at": now}, "updated_at": now}},
            return_document=RETURN_AFTER,
        )

    def cancel(self, message_id: str, by: str, reason: str) -> dict[str, Any] | None:
        """Turn a message that is not running into a tombstone. None if none matched."""
        now = utcnow()
        return self.messages.find_one_and_update(
            {"_id": message_id, **tr.status_filter("cancel")},
            {"$set": {"status": Status.CANCELLED.value, "cancelled": {"by": by, "reason": reason, "at": now},
                      "replay_requested": None, "updated_at": now, "finished_at": now, "settled_at": now}},
            return_document=RETURN_AFTER,
        )

    # -- retention -------------------------------------------------------------------------
    def sweep_lane(self, lane_doc: dict[str, Any], older_than: datetime, batch: int = 500,
                   archive: Callable[[list[dict[str, Any]]], None] | None = None) -> int:
        """Remove the lane's settled messages that are at or below its watermark and settled
        before `older_than`, walking up from its `floor`; returns how many. Cost: the messages
        removed (plus one read), never the lane's history."""
        floor, w = int(lane_doc.get("floor", 1)), int(lane_doc["w"])
        if floor > w:
            return 0
        custody = {e["s"] for e in lane_doc.get("custody", [])}
        first = self.by_seqs(lane_doc["actor"], lane_doc["lane"], [floor]).get(floor)
        if first is not None and not _removable(first, older_than, custody):
            return 0  # the oldest one is kept: so is everything above it (one read per sweep)
        hi = min(w, floor + batch - 1)
        docs = self.by_seqs(lane_doc["actor"], lane_doc["lane"], range(floor, hi + 1))
        removable, new_floor = [], floor
        for seq in range(floor, hi + 1):
            doc = docs.get(seq)
            if doc is None:  # removed already (a sweep cut off before moving the floor)
                new_floor = seq + 1
                continue
            if not _removable(doc, older_than, custody):
                break
            removable.append(doc["_id"])
            new_floor = seq + 1
        if removable:
            if archive is not None:  # written (and synced) before anything is removed
                archive([docs[int(i.rsplit(".", 1)[1])] for i in removable])
            self.messages.delete_many({"_id": {"$in": removable}, "status": {"$in": sorted(tr.FINAL)}})
        if new_floor > floor:
            self.lanes.retained_from(lane_doc["_id"], new_floor)
        return len(removable)


WALK_BATCH = 200  # numbers read per lane per step of a walk
WALK_CAP = 20_000  # messages a walk reads at most for one page (a rare filter says "more than shown")


class LaneWalk:
    """Reads an actor's lanes newest (or oldest) first, by id, and merges them by creation time."""

    def __init__(self, ledger: Ledger, lanes: list[dict[str, Any]], newest: bool,
                 stop_before: datetime | None, stop_after: datetime | None, cap: int = WALK_CAP) -> None:
        self.ledger = ledger
        self.cap = cap
        self.newest = newest
        self.stop_before = stop_before  # walking newest first: nothing older matters
        self.stop_after = stop_after  # walking oldest first: nothing newer matters
        self.cursor = {lane_["_id"]: (int(lane_["next"]) - 1 if newest else int(lane_.get("floor", 1))) for lane_ in lanes}
        self.bounds = {lane_["_id"]: (int(lane_.get("floor", 1)), int(lane_["next"]) - 1) for lane_ in lanes}
        self.lanes = {lane_["_id"]: lane_ for lane_ in lanes}
        self.buffers: dict[str, list[dict[str, Any]]] = {lane_["_id"]: [] for lane_ in lanes}
        self.read = 0

    def _exhausted(self, lid: str) -> bool:
        lo, hi = self.bounds[lid]
        pos = self.cursor[lid]
        return pos < lo if self.newest else pos > hi

    def _fill(self, lids: list[str]) -> None:
        """Read the next batch of every lane in `lids`, in one query."""
        wanted: list[str] = []
        spans: dict[str, list[int]] = {}
        for lid in lids:
            lo, hi = self.bounds[lid]
            pos = self.cursor[lid]
            seqs = list(range(pos, max(lo, pos - WALK_BATCH + 1) - 1, -1)) if self.newest else list(range(pos, min(hi, pos + WALK_BATCH - 1) + 1))
            self.cursor[lid] = (seqs[-1] - 1 if self.newest else seqs[-1] + 1) if seqs else pos
            lane = self.lanes[lid]
            spans[lid] = seqs
            wanted += [message_id(lane["actor"], lane["lane"], q) for q in seqs]
        found = {d["_id"]: d for d in self.ledger.by_ids(wanted, HIDDEN_FIELDS)} if wanted else {}
        self.read += len(found)
        for lid, seqs in spans.items():
            lane = self.lanes[lid]
            docs = [found[i] for i in (message_id(lane["actor"], lane["lane"], q) for q in seqs) if i in found]
            self.buffers[lid].extend(docs)
            if docs and self._past_window(docs[-1]):
                self.cursor[lid] = self.bounds[lid][0] - 1 if self.newest else self.bounds[lid][1] + 1

    def _past_window(self, doc: dict[str, Any]) -> bool:
        # A lane's creation times follow its numbers to within the emitters' clocks: a second of
        # slack before stopping at a date bound.
        created = as_aware(doc["created_at"])
        slack = timedelta(seconds=1)
        if self.stop_before is not None and created + slack < self.stop_before:
            return True
        return self.stop_after is not None and created - slack > self.stop_after

    def take(self, predicate: Callable[[dict[str, Any]], bool], n: int) -> tuple[list[dict[str, Any]], bool]:
        """The first `n` messages that satisfy `predicate`, in walk order; and whether the walk
        reached the end of every lane (then the count is exact)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            empty = [lid for lid, buf in self.buffers.items() if not buf and not self._exhausted(lid)]
            if empty:
                if self.read >= self.cap:
                    return out, False
                self._fill(empty)
                continue
            heads = [(buf[0], lid) for lid, buf in self.buffers.items() if buf]
            if not heads:
                return out, True
            doc, lid = (max if self.newest else min)(heads, key=_walk_order)
            self.buffers[lid].pop(0)
            if predicate(doc):
                out.append(doc)
        done = all(not buf and self._exhausted(lid) for lid, buf in self.buffers.items())
        return out, done


def _walk_order(head: tuple[dict[str, Any], str]) -> tuple[Any, int]:
    return head[0]["created_at"], head[0]["seq"]


def _matches(doc: dict[str, Any], status: str | None, event: str | None, since: datetime | None,
             until: datetime | None, text: str | None, correlation_id: str | None = None) -> bool:
    if status is not None and doc["status"] != str(status):
        return False
    if event is not None and doc["event"] != str(event):
        return False
    if correlation_id is not None and doc.get("correlation_id") != str(correlation_id):
        return False
    created = as_aware(doc["created_at"])
    if since is not None and created < since:
        return False
    if until is not None and created >= until:
        return False
    return not text or matches_text(doc, str(text))


def _visible(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without the search's own fields."""
    return {k: v for k, v in doc.items() if k not in HIDDEN_FIELDS}


def _removable(doc: dict[str, Any], older_than: datetime, custody: set[int]) -> bool:
    settled = as_aware(doc.get("settled_at") or doc.get("finished_at"))
    return doc["seq"] not in custody and tr.is_final(doc["status"]) and settled is not None and settled < older_than


def _count(tally: Tally, doc: dict[str, Any]) -> None:
    """What one passed or released message adds to its lane's counters and activity."""
    status = doc["status"]
    for entry in doc.get("attempt_log") or []:
        if entry.get("outcome") == Status.FAILED.value:
            tally.at(as_aware(entry.get("finished_at")), "failed")
    if doc.get("gap"):
        tally.add("gaps")
    elif status == Status.DONE.value:
        tally.add("done")
        tally.at(as_aware(doc.get("finished_at")), "done")
    elif status == Status.CANCELLED.value:
        tally.add("cancelled")
        tally.at(as_aware(doc.get("finished_at")), "cancelled")


def _attempt_entry(doc: dict[str, Any], now: datetime, outcome: str, error: ErrorInfo | None, owner: str) -> dict[str, Any]:
    return {
        "attempt": doc.get("attempts", 0),
        "owner": owner,
        "started_at": doc.get("started_at"),
        "finished_at": now,
        "outcome": outcome,
        "error": error.to_doc() if error else None,
    }


_NUMBERS = re.compile(r"\b(0x[0-9a-f]+|[0-9a-f]{16,}|\d+(\.\d+)?)\b", re.I)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def error_fingerprint(error: ErrorInfo) -> str:
    """What groups failures on the failures board: the exception type, its message with ids,
    numbers and quoted values normalised, and the innermost frame of the traceback."""
    message = _NUMBERS.sub("#", _QUOTED.sub("'…'", error.message))[:300]
    frames = _FRAME.findall(error.traceback or "")
    top = f"{frames[-1][0].rsplit('/', 1)[-1]}:{frames[-1][1]}" if frames else ""
    return f"{error.type}: {message} @ {top}" if top else f"{error.type}: {message}"


def _ranges(seqs: list[int]) -> str:
    out, start, prev = [], None, None
    for s in seqs:
        if start is None:
            start = prev = s
        elif s == prev + 1:  # type: ignore[operator]
            prev = s
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = s
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)


__all__ = [
    "GAP_EVENT",
    "WALK_CAP",
    "Ledger",
    "as_aware",
    "error_fingerprint",
    "lane_id",
    "message_id",
    "run_state",
    "scope_key",
    "utcnow",
]
