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
        # Every list is newest first ("at", then "_id"), filtered by one of these or none; the
        # retention sweep removes by "at".
        with store.op() as db:
            for name in {"at", "actor_at", "user_at", "action_at", "message"} & set(db.audit.index_information()):
                db.audit.drop_index(name)  # the first format's, without the sort's tie-breaker
            db.audit.create_index([("at", DESCENDING), ("_id", DESCENDING)], name="at_id")
            for field in ("actor", "user", "action", "message_id"):
                db.audit.create_index([(field, ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)], name=f"{field}_at_id")

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
