"""The console's payload search, served by an index: the query, and the backfill of old messages.

Every message stores `terms` (backend/search_terms.py: the casefolded words of its payload's
values and of its correlation id) and `terms_version` (the payload `version` they were computed
from), written with the message and again in the same write as each new payload
(Ledger.replace_payload). A search splits its text with the same tokenizer and asks for the
messages of one actor that have every word:

    {"actor": A, "terms": {"$all": [words]}, (status, event, created_at range, correlation_id)}
    sorted by (created_at, seq), newest or oldest first, skip/limit

served by the index `actor_terms_created` (actor, terms, created_at desc, seq desc), multikey on
MongoDB: the database reads the index range of one word of the actor, in order, and stops at the
page's end. The cost is that word's messages up to the page (and, for the total, up to
COUNT_CAP of them), not the actor's history. A text equal to one of the actor's message ids finds
that message.

Messages stored before `terms` existed are not found until `python -m backend reindex-search`
(`Ledger.reindex_search`) has filled theirs.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backend.search_terms import message_terms, words
from backend.store import ASCENDING, DESCENDING

if TYPE_CHECKING:
    from backend.lanes import Lanes
    from backend.store import Collection

log = logging.getLogger(__name__)

SORTS = {
    "newest": [("created_at", DESCENDING), ("seq", DESCENDING)],
    "oldest": [("created_at", ASCENDING), ("seq", ASCENDING)],
}
# A search's total is counted up to this many matches (the count costs what it counts): beyond,
# the total is None ("more than shown").
COUNT_CAP = 10_000
# The search's own fields, left out of what the console, its API and the CLI are given (a message,
# a list, a trace, the board's snapshot).
HIDDEN_FIELDS = {"terms": 0, "terms_version": 0}
REINDEX_BATCH = 500
_REINDEX_FIELDS = {"payload": 1, "correlation_id": 1, "version": 1, "terms": 1, "terms_version": 1}


def search_fields(payload: Any, correlation_id: str | None, version: int) -> dict[str, Any]:
    """The fields a message's payload write sets beside it (in the same write)."""
    return {"terms": message_terms(payload, correlation_id), "terms_version": int(version)}


def has_terms(doc: dict[str, Any]) -> bool:
    """Are the message's stored terms those of its current payload?"""
    return isinstance(doc.get("terms"), list) and doc.get("terms_version") == doc.get("version", 1)


def matches_text(doc: dict[str, Any], text: str) -> bool:
    """The search's answer for one message read otherwise (the trace's): its id is `text`, or its
    stored terms hold every word of `text`."""
    if doc.get("_id") == text:
        return True
    wanted = words(text)
    return bool(wanted) and set(wanted) <= set(doc.get("terms") or ())


def search_filter(actor: str, text: str, *, status: str | None = None, event: str | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  correlation_id: str | None = None) -> dict[str, Any] | None:
    """The query of a payload search (None: the text has no word, nothing can match). Every value
    is a plain string, list of strings or date: no operator comes from the caller."""
    wanted = words(str(text))
    if not wanted:
        return None
    flt: dict[str, Any] = {"actor": str(actor), "terms": {"$all": wanted}}
    if status is not None:
        flt["status"] = str(status)
    if event is not None:
        flt["event"] = str(event)
    if correlation_id is not None:
        flt["correlation_id"] = str(correlation_id)
    created: dict[str, datetime] = {}
    if since is not None:
        created["$gte"] = since
    if until is not None:
        created["$lt"] = until
    if created:
        flt["created_at"] = created
    return flt


class LedgerSearch:
    """Mixed into Ledger: the payload search and its backfill."""

    if TYPE_CHECKING:  # provided by Ledger
        messages: Collection
        lanes: Lanes

        def actor_doc(self, actor: str) -> dict[str, Any]: ...

    def search(self, actor: str, text: str, *, status: str | None = None, event: str | None = None,
               since: datetime | None = None, until: datetime | None = None, correlation_id: str | None = None,
               skip: int = 0, limit: int = 50, sort: str = "newest",
               count: bool = True) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the actor's messages that have every word of `text` (see the module
        docstring), and their total: exact below COUNT_CAP, else None ("more than shown")."""
        skip, limit = max(0, int(skip)), max(1, int(limit))
        text = str(text)
        flt = search_filter(actor, text, status=status, event=event, since=since, until=until,
                            correlation_id=correlation_id)
        if flt is None:
            return [], 0
        if text.startswith(f"{actor}."):  # a message id (ACTOR.LANE.SEQ), with the other filters
            exact = self.messages.find_one({**{k: v for k, v in flt.items() if k != "terms"}, "_id": text}, HIDDEN_FIELDS)
            if exact is not None:
                return ([exact] if skip == 0 else []), 1
        rows = list(self.messages.find(flt, HIDDEN_FIELDS).sort(SORTS[sort]).skip(skip).limit(limit))
        if not count:
            return rows, None
        if len(rows) < limit and (rows or skip == 0):
            return rows, skip + len(rows)  # the last page: no count needed
        total = self.messages.count_documents(flt, limit=COUNT_CAP + 1)
        return rows, (None if total > COUNT_CAP else total)

    def reindex_search(self, actor: str, batch: int = REINDEX_BATCH) -> dict[str, int]:
        """Fill the search terms of every retained message of one actor that lacks those of its
        payload (reindex_search_batch over each lane); returns {"read", "written"}. Safe to run
        again, and beside the connectors and the console."""
        lanes = int(self.actor_doc(str(actor)).get("lanes", 1))  # UnknownActor
        read = written = 0
        for lane in range(lanes):
            start: int | None = None
            while True:
                step = self.reindex_search_batch(actor, lane, start, batch)
                read, written = read + step["read"], written + step["written"]
                if step["next"] is None:
                    break
                start = step["next"]
        return {"read": read, "written": written}

    def reindex_search_batch(self, actor: str, lane: int = 0, start: int | None = None,
                             batch: int = REINDEX_BATCH) -> dict[str, Any]:
        """Fill the search terms of the next `batch` numbers of one lane, from `start` (None: the
        lane's oldest retained message), read by id: each message whose `terms_version` is not
        its payload's `version` gets the terms of its payload, in one write conditional on that
        version, so that an edit made meanwhile (which wrote its own terms) is never overwritten.

        Returns {"next": the number to start the next batch at (None: the lane's end), "read",
        "written"}. Raises UnknownActor for an actor without that lane."""
        from backend.ledger import message_id

        lane_doc = self.lanes.get(str(actor), int(lane))
        floor, top = int(lane_doc.get("floor", 1)), int(lane_doc["next"]) - 1
        first = max(floor, int(start) if start is not None else floor)
        last = min(top, first + max(1, int(batch)) - 1)
        ids = [message_id(actor, lane, seq) for seq in range(first, last + 1)]
        docs = list(self.messages.find({"_id": {"$in": ids}}, _REINDEX_FIELDS)) if ids else []
        written = 0
        for doc in docs:
            if has_terms(doc):
                continue
            version = doc.get("version", 1)
            flt = {"_id": doc["_id"], "version": version if "version" in doc else {"$exists": False},
                   "terms_version": {"$ne": version}}
            fields = search_fields(doc.get("payload"), doc.get("correlation_id"), version)
            written += int(self.messages.update_one(flt, {"$set": fields}).modified_count)
        if written:
            log.info("actor=%s lane=%d search terms filled for %d of %d message(s) from %d", actor, lane, written,
                     len(docs), first)
        return {"next": last + 1 if last < top else None, "read": len(docs), "written": written}
