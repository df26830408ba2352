"""The audit trail: who did what, when, to which actor or message, and what changed."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backend.ledger import utcnow
from backend.store import ASCENDING, DESCENDING, Store


@dataclass(frozen=True)
class AuditEntry:
    user: str
    action: str
    actor: str | None = None
    message_id: str | None = None
    changed: bool = True
    details: dict[str, Any] | None = None


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        with store.op() as db:
            db.audit.create_index([("at", DESCENDING)], name="at")
            db.audit.create_index([("actor", ASCENDING), ("at", DESCENDING)], name="actor_at")
            db.audit.create_index([("user", ASCENDING), ("at", DESCENDING)], name="user_at")
            db.audit.create_index([("action", ASCENDING), ("at", DESCENDING)], name="action_at")
            db.audit.create_index([("message_id", ASCENDING)], name="message", sparse=True)

    def record(self, entry: AuditEntry) -> dict[str, Any]:
        doc = {
            # Sortable id: entries written in the same millisecond keep their order.
            "_id": f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}",
            "at": utcnow(),
            "user": entry.user,
            "action": entry.action,
            "actor": entry.actor,
            "message_id": entry.message_id,
            "changed": entry.changed,
            "details": entry.details or {},
        }
        with self.store.op() as db:
            db.audit.insert_one(doc)
        return doc

    def find(
        self,
        *,
        user: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        message_id: str | None = None,
        since: datetime | None = None,
        skip: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int]:
        query: dict[str, Any] = {}
        for key, value in (("user", user), ("actor", actor), ("action", action), ("message_id", message_id)):
            if value is not None:
                query[key] = str(value)
        if since is not None:
            query["at"] = {"$gte": since}
        with self.store.op() as db:
            total = db.audit.count_documents(query)
            rows = list(db.audit.find(query).sort([("at", DESCENDING), ("_id", DESCENDING)]).skip(max(0, skip)).limit(max(1, limit)))
        return rows, total
