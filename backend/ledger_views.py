"""What the console, the CLI, alerts and metrics read from the ledger, derived from small documents.

Every view here reads the actor and lane documents (O(actors and lanes)) plus, by id, the few
messages that matter: each lane's first open message, the messages in its keys' custody, and the
open messages above its watermark up to OPEN_SCAN per lane (the backlog, never the history).
Nothing here scans the messages collection, so its cost does not grow with the messages stored.

Blocks are derived, not stored: an actor without ordering keys is blocked when the first open
message of one of its lanes has failed; a key is blocked while its lane's custody holds one of its
messages (its lowest entry is the message it waits on).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend import transitions as tr
from backend.ledger_search import HIDDEN_FIELDS
from backend.values import Status

if TYPE_CHECKING:
    from collections.abc import Sequence

    from backend.lanes import Lanes
    from backend.ledger import Ledger

OPEN_SCAN = 1000  # per lane: above this many open messages the rest count as queued
# A lane's allocation log and per-minute activity are the bulk of its document and no view but
# the charts reads them: left out of every other snapshot.
LANE_VIEW_PROJECTION = {"alloc": 0, "activity": 0}
# What the board does not show of a message: its payload, its edits, its attempts and its search words.
MESSAGE_VIEW_PROJECTION = {"payload": 0, "history": 0, "attempt_log": 0, **HIDDEN_FIELDS}


def _ids(lane: dict[str, Any], seqs: Iterable[int]) -> list[str]:
    from backend.ledger import message_id

    return [message_id(lane["actor"], lane["lane"], s) for s in seqs]


def _error(doc: dict[str, Any]) -> dict[str, Any] | None:
    err = doc.get("last_error")
    return {k: err.get(k) for k in ("type", "message", "traceback", "at", "fingerprint")} if err else None


def _block(doc: dict[str, Any], key: str | None) -> dict[str, Any]:
    from backend.ledger import as_aware

    return {"actor": doc["actor"], "key": key, "lane": doc["lane"], "message_id": doc["_id"], "seq": doc["seq"],
            "since": as_aware(doc.get("failed_since") or doc.get("finished_at")), "error": _error(doc),
            "status": doc["status"], "replay_requested": doc.get("replay_requested")}


class LaneSnapshot:
    """The lanes of some actors and the messages that matter, read in three queries."""

    def __init__(self, ledger: Ledger, actors: list[str] | None, scan_open: bool, activity: bool = False,
                 messages: dict[str, int] | None = None) -> None:
        projection = None if activity else LANE_VIEW_PROJECTION
        lanes = (ledger.lanes.all(projection) if actors is None
                 else [d for a in actors for d in ledger.lanes.of_actor(a, projection)])
        self.lanes = lanes
        self.by_actor: dict[str, list[dict[str, Any]]] = {}
        for lane in lanes:
            self.by_actor.setdefault(lane["actor"], []).append(lane)
        wanted: list[str] = []
        for lane in lanes:
            w, top = int(lane["w"]), int(lane["next"]) - 1
            hi = min(top, w + (OPEN_SCAN if scan_open else 1))
            wanted += _ids(lane, range(w + 1, hi + 1))
            wanted += _ids(lane, (e["s"] for e in lane.get("custody", [])))
        self.docs = {d["_id"]: d for d in ledger.by_ids(wanted, messages)} if wanted else {}

    def doc(self, lane: dict[str, Any], seq: int) -> dict[str, Any] | None:
        return self.docs.get(_ids(lane, [seq])[0])

    def head(self, lane: dict[str, Any]) -> dict[str, Any] | None:
        """The lane's first open message (its watermark may lag a worker's last settles by a
        batch: those, final, are stepped over)."""
        w, top = int(lane["w"]), int(lane["next"]) - 1
        for seq in range(w + 1, top + 1):
            doc = self.doc(lane, seq)
            if doc is None:  # not stored (yet), or beyond what was read
                return None
            if not tr.is_final(doc["status"]):
                return doc
        return None

    def custody(self, lane: dict[str, Any]) -> list[dict[str, Any]]:
        out = [self.doc(lane, e["s"]) for e in lane.get("custody", [])]
        return sorted((d for d in out if d is not None), key=lambda d: d["seq"])

    def open_created_since(self, actor: str, since: datetime) -> int | None:
        """How many of the actor's open messages were created at or after `since`, from what was
        read; None when a lane holds more open messages than the snapshot read (ask the ledger)."""
        from backend.ledger import as_aware

        n = 0
        for lane in self.by_actor.get(actor, []):
            w, top = int(lane["w"]), int(lane["next"]) - 1
            if top - w > OPEN_SCAN:
                return None
            for seq in range(w + 1, top + 1):
                doc = self.doc(lane, seq)
                if doc is not None and not tr.is_final(doc["status"]) and as_aware(doc["created_at"]) >= since:
                    n += 1
        return n

    def counts(self, lane: dict[str, Any]) -> dict[str, int]:
        """Messages of the lane by status: settled ones from its counters, open ones read."""
        c = lane.get("counts") or {}
        out = {s.value: 0 for s in Status}
        out[Status.DONE.value] = int(c.get("done", 0))
        out[Status.CANCELLED.value] = int(c.get("cancelled", 0)) + int(c.get("gaps", 0))
        for doc in self.custody(lane):
            out[doc["status"]] += 1
        w, top = int(lane["w"]), int(lane["next"]) - 1
        read = 0
        for seq in range(w + 1, top + 1):
            found = self.doc(lane, seq)
            if found is None:
                if read >= OPEN_SCAN or seq > w + OPEN_SCAN:
                    out[Status.QUEUED.value] += top - seq + 1  # beyond the scan: waiting
                    break
                continue  # reserved, not stored (yet)
            read += 1
            out[found["status"]] += 1
        return out


class LedgerViews:
    """Mixed into Ledger: derived, bounded reads."""

    if TYPE_CHECKING:  # provided by Ledger
        lanes: Lanes

        def by_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]: ...
        def actor_doc(self, actor: str) -> dict[str, Any]: ...
        def actor_docs(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]: ...

    def snapshot(self, actors: list[str] | None = None, *, scan_open: bool = True, activity: bool = False,
                 messages: dict[str, int] | None = None) -> LaneSnapshot:
        """`messages`: a projection of the messages read (None: whole documents)."""
        return LaneSnapshot(self, actors, scan_open, activity, messages)  # type: ignore[arg-type]  # self is the Ledger

    # -- actors with their derived state ----------------------------------------------------------
    def actor(self, actor: str) -> dict[str, Any]:
        """The actor's document with its derived state: `blocked` (for an actor without ordering
        keys: {message_id, seq, since, error} of the failed first open message of a lane),
        `blocked_keys` (how many keys are blocked)."""
        doc = self.actor_doc(actor)
        return self._with_state(doc, self.snapshot([actor], scan_open=False))

    def actors(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        docs = self.actor_docs(names)
        snap = self.snapshot(None if names is None else [d["_id"] for d in docs], scan_open=False)
        return [self._with_state(d, snap) for d in docs]

    def board(self, arrived_since: datetime | None = None) -> dict[str, Any]:
        """What the overview shows, from one snapshot (plain data, so that a served ledger can
        answer it): `actors`, every actor's document with its derived state (as `actors()`);
        `counts` and `heads`, the status counts and oldest open message per actor (as
        `summaries()`); `arrived`, per actor, how many of its open messages were created at or
        after `arrived_since` (None for an actor with more open messages than the snapshot read:
        ask `created_since`). The console's ledger-versus-broker check needs no more: the
        broker's figures, up to a lag old, can be short by at most the messages that arrived
        since and are still open, since those settled meanwhile left the open count too."""
        docs = self.actor_docs()
        snap = self.snapshot(None, messages=MESSAGE_VIEW_PROJECTION)
        counts, heads = self._summaries(snap)
        arrived = ({} if arrived_since is None
                   else {d["_id"]: snap.open_created_since(d["_id"], arrived_since) for d in docs})
        return {"actors": [self._with_state(d, snap) for d in docs], "counts": counts, "heads": heads,
                "arrived": arrived}

    def _with_state(self, doc: dict[str, Any], snap: LaneSnapshot) -> dict[str, Any]:
        lanes = snap.by_actor.get(doc["_id"], [])
        blocked = None
        keys: set[str] = set()
        for lane in lanes:
            if doc.get("keyed"):
                keys.update(e["k"] for e in lane.get("custody", []))
                continue
            head = snap.head(lane)
            if head is not None and tr.is_failed(head["status"]) and blocked is None:
                b = _block(head, None)
                blocked = {k: b[k] for k in ("message_id", "seq", "since", "error", "lane", "replay_requested")}
        return dict(doc, blocked=blocked, blocked_keys=len(keys), last_seq=sum(int(lane_["next"]) - 1 for lane_ in lanes))

    # -- blocks and failures ------------------------------------------------------------------
    def blocks(self, actor: str | None = None) -> list[dict[str, Any]]:
        """What is blocked now: one entry per blocked actor (key None) and per blocked ordering
        key: {actor, key, lane, message_id, seq, since, error, status, replay_requested}; for a
        key, the message it waits on (its lowest one in custody)."""
        snap = self.snapshot(None if actor is None else [actor], scan_open=False)
        out = []
        for lane in snap.lanes:
            if lane.get("keyed"):
                first: dict[str, dict[str, Any]] = {}
                for doc in snap.custody(lane):
                    from backend.ledger import scope_key

                    first.setdefault(scope_key(doc), doc)
                out += [_block(doc, key) for key, doc in first.items()]
            else:
                head = snap.head(lane)
                if head is not None and tr.is_failed(head["status"]):
                    out.append(_block(head, None))
        return sorted(out, key=lambda b: (b["actor"], b["key"] or "", b["lane"]))

    def failures(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Every failed (unrepaired) message across actors: lanes' failed first messages and
        failed messages in keys' custody, by actor, lane, sequence."""
        snap = self.snapshot(None, scan_open=False)
        out: list[dict[str, Any]] = []
        for lane in snap.lanes:
            docs = snap.custody(lane) if lane.get("keyed") else [d for d in [snap.head(lane)] if d]
            out += [d for d in docs if tr.is_failed(d["status"])]
        out.sort(key=lambda d: (d["actor"], d["lane"], d["seq"]))
        return [{k: v for k, v in d.items() if k != "search"} for d in out[: max(1, limit)]]

    def blocked_keys(self, actor: str, lane: int | None = None) -> list[dict[str, Any]]:
        """An actor with ordering keys: each blocked key with the message it waits on."""
        out = []
        for b in self.blocks(actor):
            if b["key"] is None or (lane is not None and b["lane"] != lane):
                continue
            out.append({"actor": b["actor"], "key": b["key"], "lane": b["lane"],
                        "blocked": {k: b[k] for k in ("message_id", "seq", "since", "error", "status")}})
        return out

    def key_state(self, actor: str, key: str) -> dict[str, Any] | None:
        return next((k for k in self.blocked_keys(actor) if k["key"] == key), None)

    def held(self, actor: str, key: str) -> list[dict[str, Any]]:
        """Messages waiting behind a blocked key, in order."""
        from backend.ledger import scope_key

        snap = self.snapshot([actor], scan_open=False)
        return [d for lane in snap.lanes for d in snap.custody(lane)
                if scope_key(d) == key and d["status"] == Status.HELD.value]

    # -- counts and heads --------------------------------------------------------------------
    def status_counts(self, actor: str | None = None) -> dict[str, dict[str, int]]:
        """{actor: {status: count}} for one actor or all (see LaneSnapshot.counts)."""
        if actor is not None:
            self.actor_doc(actor)
        return self.summaries(None if actor is None else [actor])[0]

    def summaries(self, actors: list[str] | None = None) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
        """(status counts per actor, oldest open message per actor) in one snapshot."""
        return self._summaries(self.snapshot(actors))

    @staticmethod
    def _summaries(snap: LaneSnapshot) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
        counts: dict[str, dict[str, int]] = {}
        heads: dict[str, dict[str, Any]] = {}
        for lane in snap.lanes:
            per = counts.setdefault(lane["actor"], {s.value: 0 for s in Status})
            for status, n in snap.counts(lane).items():
                per[status] += n
            for doc in [snap.head(lane)] + snap.custody(lane):
                if doc is None:
                    continue
                head = heads.get(lane["actor"])
                if head is None or (doc["created_at"], doc["seq"]) < (head["created_at"], head["seq"]):
                    heads[lane["actor"]] = {"_id": doc["_id"], "seq": doc["seq"], "created_at": doc["created_at"],
                                            "status": doc["status"]}
        return {a: {s: n for s, n in per.items() if n} for a, per in counts.items()}, heads

    def heads(self) -> dict[str, dict[str, Any]]:
        return self.summaries()[1]

    def first_open(self, actor: str, lane: int | None = None) -> dict[str, Any] | None:
        """The oldest open message of an actor (or of one of its lanes)."""
        snap = self.snapshot([actor], scan_open=False)
        lanes = [lane_ for lane_ in snap.lanes if lane is None or lane_["lane"] == lane]
        docs = [d for lane_ in lanes for d in ([snap.head(lane_)] + snap.custody(lane_)) if d is not None]
        return min(docs, key=lambda d: (d["created_at"], d["seq"]), default=None)

    def activity(self, since: datetime) -> dict[str, dict[str, dict[str, int]]]:
        """Per actor and per minute since `since` (within the last hour the lanes keep): handler
        attempts done and failed, messages created, messages settled (done or cancelled).

        Folded messages are counted in their lane's `activity`; failed attempts of messages not
        folded yet (failed, in custody) are read from their attempt logs."""
        from backend.lanes import minute
        from backend.ledger import as_aware

        first = minute(since)
        out: dict[str, dict[str, dict[str, int]]] = {"done": {}, "failed": {}, "created": {}, "settled": {}}

        def add(kind: str, actor: str, m: str, n: int) -> None:
            if n and m >= first:
                per = out[kind].setdefault(actor, {})
                per[m] = per.get(m, 0) + n

        snap = self.snapshot(None, scan_open=False, activity=True)
        for lane in snap.lanes:
            for m, kinds in (lane.get("activity") or {}).items():
                add("done", lane["actor"], m, int(kinds.get("done", 0)))
                add("failed", lane["actor"], m, int(kinds.get("failed", 0)))
                add("created", lane["actor"], m, int(kinds.get("created", 0)))
                add("settled", lane["actor"], m, int(kinds.get("done", 0)) + int(kinds.get("cancelled", 0)))
            for doc in [snap.head(lane)] + snap.custody(lane):
                for entry in (doc or {}).get("attempt_log") or []:
                    at = as_aware(entry.get("finished_at"))
                    if entry.get("outcome") == Status.FAILED.value and at is not None:
                        add("failed", lane["actor"], minute(at), 1)
        return out

