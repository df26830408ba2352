"""The message state machine, written once.

Every change of a message's status is one conditional single-document update whose filter is
built here from this table, so no other module compares raw status strings. The table is also
the one in docs/delivery.md ("Transitions").

A claim fences the attempt: it increments `attempts`, and renewing, settling or giving back the
attempt must present that number with the owner. A worker whose claim was taken over (its lease
ran out while it was cut off) is refused, and never takes the refusal for success.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backend.values import EDITABLE_STATUSES, FINAL_STATUSES, RUNNABLE_STATUSES, Status

P, Q, PR, D, F, H, C = (s.value for s in (Status.PENDING, Status.QUEUED, Status.PROCESSING, Status.DONE,
                                           Status.FAILED, Status.HELD, Status.CANCELLED))

FINAL = frozenset(FINAL_STATUSES)
OPEN = frozenset({P, Q, PR, F, H})
# Waiting to run: what a claim takes without an operator's request.
RUNNABLE = frozenset(RUNNABLE_STATUSES)
# What an operator may edit or cancel: everything open except a running attempt.
EDITABLE = frozenset(EDITABLE_STATUSES)


@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset[str]
    target: str
    by: str
    note: str


TABLE: tuple[Transition, ...] = (
    Transition("store", frozenset(), P, "emitter", "insert; unique _id (actor.lane.seq) and (actor, event_id)"),
    Transition("close_gap", frozenset(), C, "connector", "insert of a tombstone for a number reserved and never stored"),
    Transition("published", frozenset({P}), Q, "emitter, relay", "publish confirmed by the broker"),
    Transition("claim", RUNNABLE, PR, "connector", "its scope's lowest open message; attempts+1 fences the attempt"),
    Transition("claim_replay", frozenset({F}), PR, "connector", "replay_requested set by an operator"),
    Transition("take_over", frozenset({PR}), PR, "connector",
               "its lease ended on the database's clock: an interrupted attempt, attempts+1"),
    Transition("done", frozenset({PR}), D, "connector", "owner and attempt number match"),
    Transition("fail", frozenset({PR}), F, "connector", "owner and attempt number match"),
    Transition("give_back", frozenset({PR}), "(as claimed from)", "connector",
               "owner and attempt number match; paused or stopping before the handler was called"),
    Transition("hold", frozenset({P, Q}), H, "connector", "keyed lane: its key has an open earlier message"),
    Transition("cancel", EDITABLE, C, "operator", "never while an attempt runs"),
    Transition("request_replay", frozenset({F}), F, "operator", "sets replay_requested once"),
    Transition("edit", EDITABLE, "(same)", "operator", "compare-and-set on version"),
)
BY_NAME = {t.name: t for t in TABLE}


def sources(name: str) -> list[str]:
    return sorted(BY_NAME[name].sources)


def is_final(status: str) -> bool:
    return status in FINAL


def is_runnable(status: str) -> bool:
    return status in RUNNABLE


def is_editable(status: str) -> bool:
    return status in EDITABLE


def is_failed(status: str) -> bool:
    return status == F


def is_processing(status: str) -> bool:
    return status == PR


def claim_filter(doc: dict[str, Any], owner: str, now: datetime) -> dict[str, Any]:
    """The claim of `doc` as the caller read it: same attempt number and version (an operator's
    edit meanwhile makes the claim miss, and the caller reads the new payload), and one of:
    runnable; failed with a replay request; processing under our own name or an ended lease."""
    return {
        "_id": doc["_id"],
        "attempts": doc.get("attempts", 0),
        "version": doc.get("version", 1),
        "$or": [
            {"status": {"$in": sources("claim")}},
            {"status": F, "replay_requested": {"$ne": None}},
            {"status": PR, "owner": owner},
            {"status": PR, "lease_until": None},
            {"status": PR, "lease_until": {"$lt": now}},
        ],
    }


def attempt_filter(message_id: str, owner: str, attempt: int) -> dict[str, Any]:
    """The attempt `owner` holds: renew, settle and give back present it."""
    return {"_id": message_id, "status": PR, "owner": owner, "attempts": attempt}


def holds_attempt(doc: dict[str, Any] | None, owner: str, attempt: int) -> bool:
    return doc is not None and doc["status"] == PR and doc.get("owner") == owner and doc.get("attempts") == attempt


def settled_by(doc: dict[str, Any] | None, owner: str, attempt: int, target: str) -> bool:
    """Did this attempt's settle land (read back after an unknown outcome)?"""
    if not doc or doc["status"] != target or doc.get("attempts") != attempt:
        return False
    last = (doc.get("attempt_log") or [{}])[-1]
    return last.get("attempt") == attempt and last.get("owner") == owner


def status_filter(name: str) -> dict[str, Any]:
    return {"status": {"$in": sources(name)}}


def table_markdown() -> str:
    """The table as docs/delivery.md shows it (a test keeps the two equal)."""
    rows = ["| transition | from | to | by | condition |", "| --- | --- | --- | --- | --- |"]
    for t in TABLE:
        src = ", ".join(sorted(t.sources)) or "(new)"
        rows.append(f"| `{t.name}` | {src} | {t.target} | {t.by} | {t.note} |")
    return "\n".join(rows)
