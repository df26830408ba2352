"""Lane documents: one per queue of an actor (`_id` "actor/lane").

A lane document holds what the lane's messages cannot say one by one, each field changed by one
conditional single-document update:

- `next`: the sequence allocator (the next number to hand out), and `alloc`, the last
  ALLOC_LOG reservations ({n, at}), from which a worker tells how old a missing number is;
- `w`, the watermark: every sequence number up to `w` has been passed by the lane (settled, or
  in the custody of its ordering key). It only moves forward, by compare-and-set on its old value,
  and the same update adds what it passed to `counts` and to the per-minute `activity`: each
  message is counted exactly once, however often the fold is retried or by whom;
- `custody` (actors with ordering keys): the open messages at or below `w`, as [{s: seq, k: key}]:
  a key is blocked while it has an entry. An entry leaves with one `$pull` that also counts it;
- `pub`: every number up to it is published or settled (where the relay starts looking);
- `floor`: every settled message below it has been removed by retention.

Everything here is derived from the messages and repaired from them by whoever folds next: a
process that dies between a message's write and its lane's leaves nothing wrong, only a fold to
redo. Correctness decisions (what may run) read the messages themselves.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from backend.errors import OutcomeUnknown, UnknownActor
from backend.store import RETURN_AFTER, Store

log = logging.getLogger(__name__)

ALLOC_LOG = 32
ACTIVITY_MINUTES = 60
MINUTE_FORMAT = "%Y-%m-%dT%H:%M"
TALLY_FIELDS = ("done", "cancelled", "gaps")


def lane_id(actor: str, lane: int) -> str:
    return f"{actor}/{int(lane)}"


def minute(at: datetime) -> str:
    return at.strftime(MINUTE_FORMAT)


@dataclass
class Tally:
    """What a fold or a custody release adds to a lane's counters."""

    counts: dict[str, int] = field(default_factory=dict)
    activity: dict[tuple[str, str], int] = field(default_factory=dict)  # (minute, kind) -> n

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n

    def at(self, when: datetime | None, kind: str, n: int = 1) -> None:
        if when is not None:
            key = (minute(when), kind)
            self.activity[key] = self.activity.get(key, 0) + n

    def inc(self) -> dict[str, int]:
        out = {f"counts.{k}": v for k, v in self.counts.items() if v}
        out.update({f"activity.{m}.{k}": v for (m, k), v in self.activity.items() if v})
        return out

    def __bool__(self) -> bool:
        return any(self.counts.values()) or any(self.activity.values())


def reserved_at(doc: dict[str, Any], seq: int) -> tuple[datetime | None, bool]:
    """When `seq` was reserved, from the allocation log: (time, exact). For a number older than
    the log, the oldest entry's time is returned with exact=False: it was reserved before that."""
    entries = doc.get("alloc") or []
    upto = int(doc.get("next", 1)) - 1
    for entry in reversed(entries):
        lo = upto - int(entry["n"]) + 1
        if lo <= seq <= upto:
            return entry["at"], True
        upto = lo - 1
    if entries and seq <= upto:
        return entries[0]["at"], False
    return None, False


class Lanes:
    """The lanes collection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.col = store.col("lanes")

    def ensure_indexes(self) -> None:
        self.col.create_index([("actor", 1), ("lane", 1)], name="actor_lane")

    def ensure(self, actor: str, lanes: int, keyed: bool, now: datetime) -> None:
        """Create the actor's lane documents if missing (idempotent)."""
        for lane in range(lanes):
            self.col.update_one(
                {"_id": lane_id(actor, lane)},
                {"$set": {"keyed": keyed},
                 "$setOnInsert": {"actor": actor, "lane": lane, "next": 1, "alloc": [], "w": 0, "custody": [],
                                  "counts": {k: 0 for k in TALLY_FIELDS}, "activity": {}, "pub": 0, "floor": 1,
                                  "created_at": now}},
                upsert=True,
            )

    # -- reads
    def get(self, actor: str, lane: int) -> dict[str, Any]:
        doc = self.col.find_one({"_id": lane_id(actor, lane)})
        if doc is None:
            raise UnknownActor(f"unknown actor {actor!r} (no lane {lane})")
        return doc

    def many(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(ids)
        if not ids:
            return {}
        return {d["_id"]: d for d in self.col.find({"_id": {"$in": ids}})}

    def of_actor(self, actor: str, projection: dict[str, int] | None = None) -> list[dict[str, Any]]:
        return list(self.col.find({"actor": actor}, projection).sort("lane", 1))

    def all(self, projection: dict[str, int] | None = None) -> list[dict[str, Any]]:
        # Sorted here: the same on any store, and the embedded one sorts slowly.
        return sorted(self.col.find({}, projection), key=lambda d: (d["actor"], d["lane"]))

    # -- writes
    def allocate(self, actor: str, lane: int, count: int, now: datetime) -> int:
        """Reserve `count` consecutive numbers; returns the first. Not retried on an unknown
        outcome (an increment is not idempotent): the numbers, if taken, become a gap that the
        lane closes one grace period after this reservation."""
        doc = self.col.find_one_and_update(
            {"_id": lane_id(actor, lane)},
            {"$inc": {"next": count, f"activity.{minute(now)}.created": count},
             "$push": {"alloc": {"$each": [{"n": count, "at": now}], "$slice": -ALLOC_LOG}}},
            projection={"next": 1},
            return_document=RETURN_AFTER,
        )
        if doc is None:
            raise UnknownActor(f"unknown actor {actor!r} (no lane {lane})")
        return int(doc["next"]) - count

    def advance(self, doc: dict[str, Any], to: int, tally: Tally, *, custody: dict[str, Any] | None = None,
                key_blocked: str | None = None) -> dict[str, Any] | None:
        """Move the watermark from doc["w"] (as the caller read it) to `to`, counting `tally`, and
        optionally put one message into custody ({s, k}). `key_blocked`: only if that key still has
        an entry in custody (a key released meanwhile must not take a new entry).

        Returns the lane document after the change, or None if it had changed (re-read and decide
        again). An unknown outcome is resolved by reading the document back."""
        flt: dict[str, Any] = {"_id": doc["_id"], "w": int(doc["w"])}
        if key_blocked is not None:
            flt["custody.k"] = key_blocked
        update: dict[str, Any] = {"$set": {"w": int(to)}}
        inc = tally.inc()
        if inc:
            update["$inc"] = inc
        if custody is not None:
            update["$push"] = {"custody": custody}
        try:
            return self.col.find_one_and_update(flt, update, return_document=RETURN_AFTER)
        except OutcomeUnknown:
            after = self.col.find_one({"_id": doc["_id"]})
            if after is not None and int(after["w"]) >= to and (
                custody is None or any(e["s"] == custody["s"] for e in after.get("custody", []))
            ):
                return after
            return None

    def release(self, lane_doc_id: str, seq: int, tally: Tally) -> dict[str, Any] | None:
        """Take one settled message out of custody, counting it. Returns the lane document after,
        or None if the entry was already gone (released by another worker: nothing counted)."""
        update: dict[str, Any] = {"$pull": {"custody": {"s": int(seq)}}}
        inc = tally.inc()
        if inc:
            update["$inc"] = inc
        try:
            return self.col.find_one_and_update({"_id": lane_doc_id, "custody.s": int(seq)}, update,
                                                return_document=RETURN_AFTER)
        except OutcomeUnknown:
            return None  # applied or not, the entry is gone or will be released by the next look

    def published_upto(self, lane_doc_id: str, upto: int) -> None:
        self.col.update_one({"_id": lane_doc_id}, {"$max": {"pub": int(upto)}})

    def retained_from(self, lane_doc_id: str, floor: int) -> None:
        self.col.update_one({"_id": lane_doc_id}, {"$max": {"floor": int(floor)}})

    def prune_activity(self, doc: dict[str, Any], now: datetime) -> None:
        """Forget per-minute activity older than ACTIVITY_MINUTES."""
        oldest = minute(now - timedelta(minutes=ACTIVITY_MINUTES))
        stale = [m for m in (doc.get("activity") or {}) if m < oldest]
        if stale:
            self.col.update_one({"_id": doc["_id"]}, {"$unset": {f"activity.{m}": "" for m in stale}})
