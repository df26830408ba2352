"""Values shared by every layer: statuses, messages, actor state, errors recorded on messages."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

ACTOR_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_EVENT_NAME = 255


class Status(str, Enum):
    """Lifecycle of one persisted message (one event for one subscriber)."""

    PENDING = "pending"  # stored in the ledger, publish not confirmed yet (the relay owns it)
    QUEUED = "queued"  # confirmed by the broker, waiting in the actor's queue
    PROCESSING = "processing"  # a handler attempt has started
    DONE = "done"
    FAILED = "failed"  # the handler failed: the actor (or its ordering key) is blocked on it
    HELD = "held"  # its ordering key has an earlier open message: waits in the key's custody
    CANCELLED = "cancelled"  # tombstone: never processed, kept for the record

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.CANCELLED)


# The sets the state machine (backend/transitions.py) is written with.
FINAL_STATUSES = (Status.DONE.value, Status.CANCELLED.value)
EDITABLE_STATUSES = (Status.PENDING.value, Status.QUEUED.value, Status.FAILED.value, Status.HELD.value)
RUNNABLE_STATUSES = (Status.PENDING.value, Status.QUEUED.value, Status.HELD.value)


class ActorRunState(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    BLOCKED = "blocked"


class QueueType(str, Enum):
    QUORUM = "quorum"
    CLASSIC = "classic"


@dataclass(frozen=True)
class ErrorInfo:
    """What a failed attempt left behind: shown to the operator."""

    type: str
    message: str
    traceback: str = ""

    def to_doc(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class Message:
    """One event for one subscriber, as the handler sees it (read from the ledger)."""

    id: str
    actor: str
    seq: int
    event: str
    payload: Any
    correlation_id: str | None
    attempt: int
    created_at: datetime
    version: int = 1
    headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Message:
        return cls(
            id=doc["_id"],
            actor=doc["actor"],
            seq=doc["seq"],
            event=doc["event"],
            payload=doc["payload"],
            correlation_id=doc.get("correlation_id"),
            attempt=doc.get("attempts", 0),
            created_at=doc["created_at"],
            version=doc.get("version", 1),
        )


@dataclass(frozen=True)
class Envelope:
    """What travels on the broker: a reference to a ledger message, never its payload.

    The ledger is the source of truth (an operator may edit the payload after publication),
    so the consumer always reads the payload from the ledger.
    """

    id: str
    actor: str
    seq: int
    event: str
    lane: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "actor": self.actor, "seq": self.seq, "event": self.event, "lane": self.lane}

    @classmethod
    def from_wire(cls, data: Any) -> Envelope:
        """Raises ValueError on anything that is not an envelope we wrote."""
        if not isinstance(data, dict):
            raise ValueError("envelope is not a JSON object")
        try:
            env = cls(
                id=str(data["id"]),
                actor=str(data["actor"]),
                seq=int(data["seq"]),
                event=str(data["event"]),
                lane=int(data.get("lane", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed envelope: {exc!r}") from exc
        if env.seq < 1:
            raise ValueError("malformed envelope: seq must be >= 1")
        return env
