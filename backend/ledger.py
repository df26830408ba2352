"""The ledger: every persisted message and every actor's state, in MongoDB.

Each method is one single-document atomic operation (or a read), so a real replica set behaves
like the embedded store: no multi-document transaction anywhere. Conditional updates (status,
owner, version) make every transition safe under concurrent callers.
"""
from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from backend.errors import Conflict, UnknownActor, UnknownMessage
from backend.store import ASCENDING, DESCENDING, RETURN_AFTER, RETURN_BEFORE, DuplicateKey, Store
from backend.values import EDITABLE_STATUSES, FINAL_STATUSES, LANE_OPEN_STATUSES, ActorRunState, ErrorInfo, Status

log = logging.getLogger(__name__)

ATTEMPT_LOG_SIZE = 50
# The console's payload search runs in the database over this much of each message's flattened
# payload and correlation id (stored as `search`), never by pulling payloads into the console.
SEARCH_TEXT_CHARS = 4096
HIDDEN_FIELDS = {"search": False}  # internal to the ledger: not part of a message as read
GAP_EVENT = "(sequence gap)"
CONTROL_EVENT = "(control)"


def utcnow() -> datetime:
    # Millisecond precision: what BSON keeps, so values read back compare equal.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_aware(value: datetime | None) -> datetime | None:
    """mongomock and pymongo without tz_aware return naive UTC datetimes."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def new_message_id() -> str:
    return uuid.uuid4().hex


def run_state(actor_doc: dict[str, Any]) -> ActorRunState:
    if actor_doc.get("blocked"):
        return ActorRunState.BLOCKED
    if actor_doc.get("paused"):
        return ActorRunState.PAUSED
    return ActorRunState.RUNNING


class Ledger:
    """Messages and actors collections."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ensure_indexes()

    # -- set-up ---------------------------------------------------------------------------
    def ensure_indexes(self) -> None:
        with self.store.op() as db:
            m = db.messages
            # Unique on MongoDB. mongomock checks unique indexes by scanning the whole collection on
            # every insert and update, so the embedded store enforces it in insert() instead,
            # where its global lock makes check-then-insert atomic.
            m.create_index(
                [("actor", ASCENDING), ("lane", ASCENDING), ("seq", ASCENDING)],
                unique=not self.store.embedded,
                name="actor_lane_seq",
            )
            m.create_index([("actor", ASCENDING), ("key", ASCENDING), ("status", ASCENDING), ("seq", ASCENDING)], name="actor_key_status_seq")
            db.keys.create_index([("actor", ASCENDING), ("lane", ASCENDING)], name="actor_lane")
            m.create_index([("actor", ASCENDING), ("status", ASCENDING), ("seq", ASCENDING)], name="actor_status_seq")
            m.create_index([("status", ASCENDING), ("created_at", ASCENDING)], name="status_created")
            m.create_index([("event", ASCENDING), ("created_at", DESCENDING)], name="event_created")
            m.create_index([("correlation_id", ASCENDING)], name="correlation", sparse=True)
            m.create_index([("actor", ASCENDING), ("created_at", DESCENDING)], name="actor_created")
            # The console's per-minute charts (backend.metrics.ledger_activity) select by these.
            m.create_index([("finished_at", ASCENDING)], name="finished", sparse=True)
            m.create_index([("created_at", ASCENDING)], name="created")

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
        """Create the actor's state document on first sight; refresh its declaration after.

        `lanes` (the number of queues of an actor with ordering keys) is fixed on first sight:
        changing it would move keys to other lanes while their messages are in flight."""
        now = utcnow()
        with self.store.op() as db:
            return db.actors.find_one_and_update(
                {"_id": actor},
                {
                    "$set": {
                        "schema": schema,
                        "subscriptions": subscriptions,
                        "description": description,
                        "keyed": any(sub.get("ordering_key") for sub in subscriptions),
                        "updated_at": now,
                    },
                    "$setOnInsert": {
                        "last_seq": 0,
                        "seqs": {},
                        "lanes": max(1, int(lanes)),
                        "queue_type": queue_type,
                        "created_at": now,
                        "paused": None,
                        "blocked": None,
                    },
                },
                upsert=True,
                return_document=RETURN_AFTER,
            )

    def actor(self, actor: str) -> dict[str, Any]:
        with self.store.op() as db:
            doc = db.actors.find_one({"_id": actor})
        if doc is None:
            raise UnknownActor(f"unknown actor {actor!r}")
        return doc

    def actors(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if names is None else {"_id": {"$in": list(names)}}
        with self.store.op() as db:
            return list(db.actors.find(query).sort("_id", ASCENDING))

    def allocate(self, actor: str, count: int = 1, lane: int = 0) -> int:
        """Reserve `count` consecutive sequence numbers in one lane; returns the first one."""
        with self.store.op() as db:
            doc = db.actors.find_one_and_update(
                {"_id": actor},
                {"$inc": {f"seqs.{int(lane)}": count, "last_seq": count}},
                return_document=RETURN_AFTER,
            )
        if doc is None:
            raise UnknownActor(f"unknown actor {actor!r}")
        return int(doc["seqs"][str(int(lane))]) - count + 1

    def set_paused(self, actor: str, by: str, reason: str) -> bool:
        """Returns False when the actor was already paused (idempotent)."""
        with self.store.op() as db:
            res = db.actors.update_one(
                {"_id": actor, "paused": None},
                {"$set": {"paused": {"by": by, "reason": reason, "at": utcnow()}}},
            )
            if res.matched_count == 0 and db.actors.count_documents({"_id": actor}) == 0:
                raise UnknownActor(f"unknown actor {actor!r}")
        return res.modified_count == 1

    def clear_paused(self, actor: str) -> bool:
        with self.store.op() as db:
            res = db.actors.update_one({"_id": actor, "paused": {"$ne": None}}, {"$set": {"paused": None}})
            if res.matched_count == 0 and db.actors.count_documents({"_id": actor}) == 0:
                raise UnknownActor(f"unknown actor {actor!r}")
        return res.modified_count == 1

    def set_blocked(self, actor: str, message_id: str, seq: int, error: ErrorInfo) -> None:
        """Block the actor on a message; blocking again on the same message keeps `since` and
        records the newest error."""
        with self.store.op() as db:
            res = db.actors.update_one(
                {"_id": actor, "blocked.message_id": message_id}, {"$set": {"blocked.error": error.to_doc()}}
            )
            if res.matched_count:
                return
            db.actors.update_one(
                {"_id": actor},
                {
                    "$set": {
                        "blocked": {
                            "message_id": message_id,
                            "seq": seq,
                            "since": utcnow(),
                            "error": error.to_doc(),
                        }
                    }
                },
            )

    def clear_blocked(self, actor: str, message_id: str) -> bool:
        """Unblock only if the actor is still blocked on that message."""
        with self.store.op() as db:
            res = db.actors.update_one(
                {"_id": actor, "blocked.message_id": message_id}, {"$set": {"blocked": None}}
            )
        return res.modified_count == 1

    # -- writing messages -------------------------------------------------------------------
    @staticmethod
    def new_message(
        actor: str,
        seq: int,
        event: str,
        payload: Any,
        correlation_id: str | None,
        lane: int = 0,
        key: str | None = None,
    ) -> dict[str, Any]:
        now = utcnow()
        return {
            "_id": new_message_id(),
            "actor": actor,
            "seq": seq,
            "lane": lane,
            "key": key,
            "control": None,
            "event": event,
            "payload": payload,
            "search": search_text(payload, correlation_id),
            "correlation_id": correlation_id,
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
            "created_at": now,
            "updated_at": now,
            "published_at": None,
            "started_at": None,
            "finished_at": None,
        }

    def insert(self, docs: Sequence[dict[str, Any]]) -> None:
        """Raises DuplicateKey if a sequence number was taken meanwhile (see tombstone_gap)."""
        if not docs:
            return
        with self.store.op() as db:
            if self.store.embedded:
                taken = self.store.taken_seq_keys()
                keys = [(d["actor"], d.get("lane", 0), d["seq"]) for d in docs]
                clash = next((k for k in keys if k in taken), None)
                if clash is not None or len(set(keys)) < len(keys):
                    raise DuplicateKey(f"E11000 duplicate key: actor_lane_seq {clash}")
                db.messages.insert_many(list(docs), ordered=True)
                taken.update(keys)
                return
            db.messages.insert_many(list(docs), ordered=True)

    def mark_queued(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        now = utcnow()
        with self.store.op() as db:
            res = db.messages.update_many(
                {"_id": {"$in": list(ids)}, "status": Status.PENDING.value},
                {"$set": {"status": Status.QUEUED.value, "published_at": now, "updated_at": now}},
            )
        return res.modified_count

    def pending(self, *, created_before: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """Unpublished messages, oldest actor sequence first: what the relay must publish."""
        with self.store.op() as db:
            cur = (
                db.messages.find({"status": Status.PENDING.value, "created_at": {"$lte": created_before}})
                .sort([("actor", ASCENDING), ("seq", ASCENDING)])
                .limit(limit)
            )
            return list(cur)

    # -- reading messages -------------------------------------------------------------------
    def message(self, message_id: str) -> dict[str, Any]:
        if not isinstance(message_id, str):
            raise UnknownMessage("message id must be a string")
        with self.store.op() as db:
            doc = db.messages.find_one({"_id": message_id}, HIDDEN_FIELDS)
        if doc is None:
            raise UnknownMessage(f"unknown message {message_id!r}")
        return doc

    def by_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        with self.store.op() as db:
            return list(db.messages.find({"_id": {"$in": list(ids)}}))

    def first_open(self, actor: str, lane: int | None = None, *, keyed: bool = False) -> dict[str, Any] | None:
        """The lowest-sequence message (of one lane, or of any) not settled yet.

        For an actor with ordering keys, failed and held messages are in the ledger's custody
        (they wait on their key, not on the lane), so only pending, queued and processing ones
        count."""
        query: dict[str, Any] = {"actor": actor}
        if keyed:
            query["status"] = {"$in": list(LANE_OPEN_STATUSES)}
        else:
            query["status"] = {"$nin": list(FINAL_STATUSES)}
        if lane is not None:
            query["lane"] = lane
        with self.store.op() as db:
            return db.messages.find_one(query, sort=[("seq", ASCENDING)])

    def heads(self) -> dict[str, dict[str, Any]]:
        """Every actor's lowest-sequence open message (across lanes: the oldest one waiting), in
        one query; {actor: {_id, seq, created_at, status}}."""
        with self.store.op() as db:
            rows = db.messages.aggregate([
                {"$match": {"status": {"$nin": list(FINAL_STATUSES)}}},
                {"$sort": {"created_at": 1, "seq": 1}},
                {"$group": {"_id": "$actor", "id": {"$first": "$_id"}, "seq": {"$first": "$seq"},
                            "created_at": {"$first": "$created_at"}, "status": {"$first": "$status"}}},
            ])
            return {r["_id"]: {"_id": r["id"], "seq": r["seq"], "created_at": r["created_at"], "status": r["status"]} for r in rows}

    def by_seq(self, actor: str, lo: int, hi: int, lane: int = 0) -> list[dict[str, Any]]:
        """Messages of one lane with lo <= seq < hi, in order."""
        with self.store.op() as db:
            return list(
                db.messages.find({"actor": actor, "lane": lane, "seq": {"$gte": lo, "$lt": hi}}).sort("seq", ASCENDING)
            )

    def count_below(self, actor: str, seq: int, lane: int = 0) -> int:
        """How many messages of the lane have a sequence number below `seq` (settled or not)."""
        with self.store.op() as db:
            return db.messages.count_documents({"actor": actor, "lane": lane, "seq": {"$lt": seq}})

    def last_settled_seq(self, actor: str, lane: int = 0, *, keyed: bool = False) -> int:
        """Highest sequence number of the lane that the lane has moved past."""
        query: dict[str, Any] = {"actor": actor, "lane": lane}
        query["status"] = {"$nin": list(LANE_OPEN_STATUSES)} if keyed else {"$in": list(FINAL_STATUSES)}
        with self.store.op() as db:
            doc = db.messages.find_one(query, sort=[("seq", DESCENDING)])
        return int(doc["seq"]) if doc else 0

    def find(
        self,
        *,
        actor: str | None = None,
        status: str | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
        skip: int = 0,
        limit: int = 50,
        newest_first: bool = False,
    ) -> tuple[list[dict[str, Any]], int]:
        """Filtered page of messages and the total count. Every filter is a plain string/date:
        callers never pass raw query documents, so no operator can be injected."""
        query: dict[str, Any] = {}
        if actor is not None:
            query["actor"] = str(actor)
        if status is not None:
            query["status"] = str(status)
        if event is not None:
            query["event"] = str(event)
        if since is not None or until is not None:
            query["created_at"] = {}
            if since is not None:
                query["created_at"]["$gte"] = since
            if until is not None:
                query["created_at"]["$lt"] = until
        with self.store.op() as db:
            if text:
                # Payload search: a literal (escaped) case-insensitive substring of the message's
                # search text (keys and scalars of the payload, and its correlation id), or its id.
                # The database evaluates it, with the other filters, on MongoDB as on the embedded
                # store; operators in `text` are plain characters.
                literal = re.escape(str(text))
                query["$or"] = [{"search": {"$regex": literal, "$options": "i"}}, {"_id": str(text)}]
            total = db.messages.count_documents(query)
            order = DESCENDING if newest_first else ASCENDING
            cur = db.messages.find(query, HIDDEN_FIELDS).sort([("created_at", order), ("seq", order)]).skip(max(0, skip)).limit(max(1, limit))
            return list(cur), total

    def trace(self, correlation_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """Every message of one business event (one correlation id) across actors, oldest first."""
        with self.store.op() as db:
            cur = db.messages.find({"correlation_id": str(correlation_id)}, HIDDEN_FIELDS)
            return list(cur.sort([("created_at", ASCENDING), ("actor", ASCENDING), ("seq", ASCENDING)]).limit(max(1, limit)))

    def failures(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every failed (unrepaired) message across actors, by actor then sequence number."""
        with self.store.op() as db:
            cur = db.messages.find({"status": Status.FAILED.value}, HIDDEN_FIELDS)
            return list(cur.sort([("actor", ASCENDING), ("lane", ASCENDING), ("seq", ASCENDING)]).limit(max(1, limit)))

    def blocks(self) -> list[dict[str, Any]]:
        """What is blocked right now: one entry per blocked actor (key None) and per blocked
        ordering key: {actor, key, message_id, seq, since, error}."""
        out: list[dict[str, Any]] = []
        with self.store.op() as db:
            for doc in db.actors.find({"blocked": {"$ne": None}}):
                b = doc["blocked"]
                out.append({"actor": doc["_id"], "key": None, "message_id": b["message_id"], "seq": b["seq"],
                            "since": as_aware(b.get("since")), "error": b.get("error")})
            for doc in db.keys.find({"blocked": {"$ne": None}}):
                b = doc["blocked"]
                out.append({"actor": doc["actor"], "key": doc["key"], "message_id": b["message_id"], "seq": b["seq"],
                            "since": as_aware(b.get("since")), "error": b.get("error")})
        return sorted(out, key=lambda b: (b["actor"], b["key"] or ""))

    def status_counts(self, actor: str | None = None) -> dict[str, dict[str, int]]:
        """{actor: {status: count}} for one actor or all."""
        match: dict[str, Any] = {} if actor is None else {"actor": actor}
        out: dict[str, dict[str, int]] = {}
        with self.store.op() as db:
            for row in db.messages.aggregate(
                [{"$match": match}, {"$group": {"_id": {"a": "$actor", "s": "$status"}, "n": {"$sum": 1}}}]
            ):
                out.setdefault(row["_id"]["a"], {})[row["_id"]["s"]] = row["n"]
        return out

    def summaries(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
        """(status_counts(), heads()) in one go, for the console's overview.

        On MongoDB these are two aggregations the server evaluates. The embedded store (mongomock)
        evaluates aggregation pipelines in Python at several times the cost of reading the same
        four fields, so there one projected read feeds both, grouped here."""
        if not self.store.embedded:
            return self.status_counts(), self.heads()
        counts: dict[str, dict[str, int]] = {}
        heads: dict[str, dict[str, Any]] = {}
        with self.store.op() as db:
            for d in db.messages.find({}, {"actor": 1, "status": 1, "seq": 1, "created_at": 1}):
                actor, status = d["actor"], d["status"]
                per = counts.setdefault(actor, {})
                per[status] = per.get(status, 0) + 1
                if status in FINAL_STATUSES:
                    continue
                head = heads.get(actor)
                if head is None or (d["created_at"], d["seq"]) < (head["created_at"], head["seq"]):
                    heads[actor] = {"_id": d["_id"], "seq": d["seq"], "created_at": d["created_at"], "status": status}
        return counts, heads

    # -- processing transitions (the connector runtime) -------------------------------------
    def claim(self, message_id: str, owner: str, lease_seconds: float) -> tuple[dict[str, Any], str] | None:
        """Start an attempt, leased to `owner` for `lease_seconds` (renew_lease extends it).

        Returns (document as it now is, status it had) or None if the message is not claimable:
        done, cancelled, failed without a replay request, unknown, or processing under another
        owner's live lease. A message left processing by an owner that stopped renewing (killed,
        or cut off from the ledger) can be claimed again once its lease has expired, so two
        replicas never run the same message at once, even when the broker has already handed
        the queue to the standby."""
        now = utcnow()
        processing = Status.PROCESSING.value
        with self.store.op() as db:
            before = db.messages.find_one_and_update(
                {
                    "_id": message_id,
                    "$or": [
                        {"status": {"$in": [Status.PENDING.value, Status.QUEUED.value, Status.HELD.value]}},
                        {"status": Status.FAILED.value, "replay_requested": {"$ne": None}},
                        {"status": processing, "owner": owner},
                        {"status": processing, "lease_until": None},
                        {"status": processing, "lease_until": {"$lt": now}},
                    ],
                },
                {
                    "$set": {
                        "status": processing,
                        "owner": owner,
                        "lease_until": now + timedelta(seconds=lease_seconds),
                        "started_at": now,
                        "updated_at": now,
                    },
                    "$inc": {"attempts": 1},
                },
                return_document=RETURN_BEFORE,
            )
        if before is None:
            return None
        previous = before["status"]
        doc = dict(before, status=processing, owner=owner, started_at=now, attempts=before["attempts"] + 1)
        return doc, previous

    def renew_lease(self, message_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease of an attempt `owner` holds. False: the attempt is no longer ours."""
        now = utcnow()
        with self.store.op() as db:
            res = db.messages.update_one(
                {"_id": message_id, "status": Status.PROCESSING.value, "owner": owner},
                {"$set": {"lease_until": now + timedelta(seconds=lease_seconds)}},
            )
        return res.modified_count == 1

    def unclaim(self, message_id: str, owner: str) -> bool:
        """Give an attempt back untouched (a control message the worker could not carry out yet)."""
        now = utcnow()
        with self.store.op() as db:
            res = db.messages.update_one(
                {"_id": message_id, "status": Status.PROCESSING.value, "owner": owner},
                {"$set": {"status": Status.QUEUED.value, "owner": None, "lease_until": None, "updated_at": now}},
            )
        return res.modified_count == 1

    def complete(self, doc: dict[str, Any], owner: str) -> bool:
        return self._settle(doc, owner, Status.DONE, None)

    def fail(self, doc: dict[str, Any], owner: str, error: ErrorInfo) -> bool:
        return self._settle(doc, owner, Status.FAILED, error)

    def _settle(self, doc: dict[str, Any], owner: str, status: Status, error: ErrorInfo | None) -> bool:
        """End the attempt `owner` holds: done, or failed with its error. False if not held."""
        now = utcnow()
        fields: dict[str, Any] = {
            "status": status.value,
            "finished_at": now,
            "updated_at": now,
            "replay_requested": None,
            "owner": None,
            "lease_until": None,
        }
        if error is not None:
            fields["last_error"] = dict(error.to_doc(), at=now)
        entry = _attempt_entry(doc, now, status.value, error)
        with self.store.op() as db:
            res = db.messages.update_one(
                {"_id": doc["_id"], "status": Status.PROCESSING.value, "owner": owner},
                {"$set": fields, "$push": {"attempt_log": {"$each": [entry], "$slice": -ATTEMPT_LOG_SIZE}}},
            )
        return res.modified_count == 1

    def note_attempt(self, doc: dict[str, Any], outcome: str, error: ErrorInfo | None) -> None:
        """Record an attempt that did not settle the message (transient error, interruption)."""
        now = utcnow()
        with self.store.op() as db:
            db.messages.update_one(
                {"_id": doc["_id"]},
                {
                    "$push": {"attempt_log": {"$each": [_attempt_entry(doc, now, outcome, error)], "$slice": -ATTEMPT_LOG_SIZE}},
                    "$set": {"last_error": dict(error.to_doc(), at=now) if error else None, "updated_at": now},
                },
            )

    def restart_attempt(self, doc: dict[str, Any], owner: str) -> dict[str, Any]:
        """Count one more attempt of a message already held (transient retry)."""
        now = utcnow()
        with self.store.op() as db:
            db.messages.update_one(
                {"_id": doc["_id"], "owner": owner},
                {"$inc": {"attempts": 1}, "$set": {"started_at": now, "updated_at": now}},
            )
        return dict(doc, attempts=doc["attempts"] + 1, started_at=now)

    def tombstone_gap(self, actor: str, seq: int, lane: int = 0) -> bool:
        """Close a sequence number that was allocated but never stored (its emitter died between
        the two writes). The unique (actor, seq) index makes this race-free: if the real message
        lands first the tombstone is refused, and an emitter that comes late gets DuplicateKey and
        allocates again."""
        doc = self.new_message(actor, seq, GAP_EVENT, None, None, lane)
        now = utcnow()
        doc.update(
            status=Status.CANCELLED.value,
            cancelled={"by": "system", "reason": "sequence number allocated but never stored", "at": now},
        )
        try:
            self.insert([doc])
        except DuplicateKey:
            return False
        log.warning("actor=%s seq=%d closed a sequence gap with a tombstone", actor, seq)
        return True

    # -- operator transitions ---------------------------------------------------------------
    def replace_payload(
        self, doc: dict[str, Any], payload: Any, by: str, diff: str
    ) -> dict[str, Any]:
        """Compare-and-set on the version read by the caller. Raises Conflict if it changed."""
        now = utcnow()
        version = int(doc.get("version", 1))
        entry = {"version": version + 1, "by": by, "at": now, "previous": doc["payload"], "payload": payload, "diff": diff}
        with self.store.op() as db:
            after = db.messages.find_one_and_update(
                {"_id": doc["_id"], "version": version, "status": {"$in": list(EDITABLE_STATUSES)}},
                {"$set": {"payload": payload, "search": search_text(payload, doc.get("correlation_id")),
                          "version": version + 1, "updated_at": now}, "$push": {"history": entry}},
                return_document=RETURN_AFTER,
            )
        if after is None:
            raise Conflict(f"message {doc['_id']} changed meanwhile (now {self.message(doc['_id'])['status']}); reload and retry")
        return after

    def request_replay(self, message_id: str, by: str) -> dict[str, Any] | None:
        """Returns the updated document, or None if no failed-and-not-yet-requested message matched."""
        now = utcnow()
        with self.store.op() as db:
            return db.messages.find_one_and_update(
                {"_id": message_id, "status": Status.FAILED.value, "replay_requested": None},
                {"$set": {"replay_requested": {"by": by, "at": now}, "updated_at": now}},
                return_document=RETURN_AFTER,
            )

    def cancel(self, message_id: str, by: str, reason: str) -> dict[str, Any] | None:
        now = utcnow()
        with self.store.op() as db:
            return db.messages.find_one_and_update(
                {"_id": message_id, "status": {"$in": list(EDITABLE_STATUSES)}},
                {
                    "$set": {
                        "status": Status.CANCELLED.value,
                        "cancelled": {"by": by, "reason": reason, "at": now},
                        "replay_requested": None,
                        "updated_at": now,
                        "finished_at": now,
                    }
                },
                return_document=RETURN_AFTER,
            )


    # -- ordering keys ------------------------------------------------------------------------
    @staticmethod
    def key_id(actor: str, key: str) -> str:
        return f"{actor}/{key}"

    def hold(self, message_id: str) -> bool:
        """Park a message behind its blocked ordering key (it leaves the broker, stays here)."""
        with self.store.op() as db:
            res = db.messages.update_one(
                {"_id": message_id, "status": {"$in": [Status.PENDING.value, Status.QUEUED.value]}},
                {"$set": {"status": Status.HELD.value, "updated_at": utcnow()}},
            )
        return res.modified_count == 1

    def block_key(self, actor: str, key: str, lane: int, doc: dict[str, Any], error: ErrorInfo) -> None:
        """Block one ordering key on a failed message; again on the same message keeps `since`."""
        now = utcnow()
        kid = self.key_id(actor, key)
        with self.store.op() as db:
            res = db.keys.update_one({"_id": kid, "blocked.message_id": doc["_id"]}, {"$set": {"blocked.error": error.to_doc()}})
            if res.matched_count:
                return
            db.keys.update_one(
                {"_id": kid},
                {
                    "$set": {
                        "actor": actor,
                        "key": key,
                        "lane": lane,
                        "blocked": {"message_id": doc["_id"], "seq": doc["seq"], "since": now, "error": error.to_doc()},
                    }
                },
                upsert=True,
            )

    def unblock_key(self, actor: str, key: str) -> None:
        with self.store.op() as db:
            db.keys.delete_one({"_id": self.key_id(actor, key)})

    def blocked_keys(self, actor: str, lane: int | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"actor": actor, "blocked": {"$ne": None}}
        if lane is not None:
            query["lane"] = lane
        with self.store.op() as db:
            return list(db.keys.find(query).sort("_id", ASCENDING))

    def key_state(self, actor: str, key: str) -> dict[str, Any] | None:
        with self.store.op() as db:
            return db.keys.find_one({"_id": self.key_id(actor, key)})

    def held(self, actor: str, key: str) -> list[dict[str, Any]]:
        """Messages waiting behind a blocked key, in order."""
        with self.store.op() as db:
            return list(
                db.messages.find({"actor": actor, "key": key, "status": Status.HELD.value}).sort("seq", ASCENDING)
            )

    def insert_control(self, actor: str, lane: int, key: str, action: str, message_id: str, by: str) -> dict[str, Any]:
        """Queue an instruction for the lane's consumer, in the lane's own order: the consumer that
        serves the lane is then the only one acting on its keys (no race between replicas)."""
        for _ in range(5):
            seq = self.allocate(actor, 1, lane)
            doc = self.new_message(actor, seq, CONTROL_EVENT, None, None, lane, key)
            doc["control"] = {"action": action, "message_id": message_id, "by": by}
            try:
                self.insert([doc])
                return doc
            except DuplicateKey:
                continue
        raise Conflict("could not queue the instruction: sequence numbers kept being taken")


def _attempt_entry(doc: dict[str, Any], now: datetime, outcome: str, error: ErrorInfo | None) -> dict[str, Any]:
    return {
        "attempt": doc.get("attempts", 0),
        "started_at": doc.get("started_at"),
        "finished_at": now,
        "outcome": outcome,
        "error": error.to_doc() if error else None,
    }


def search_text(payload: Any, correlation_id: str | None) -> str:
    """What the payload search looks in: the payload's keys and scalars, then the correlation id
    (the first SEARCH_TEXT_CHARS characters)."""
    return f"{_flatten(payload)} {correlation_id or ''}"[:SEARCH_TEXT_CHARS]


def _flatten(value: Any) -> str:
    """Every key and scalar of a payload as one string, for substring search."""
    if isinstance(value, dict):
        return " ".join(f"{k} {_flatten(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    return "" if value is None else str(value)
