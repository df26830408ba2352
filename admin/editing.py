"""The edit preview: validate an operator's payload against the actor's schema and show the diff,
without writing anything. Saving goes through backend.operations.Operations.edit, which checks
the same things again (and the version) before it writes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.app import Backend
from backend.errors import Conflict, ValidationError
from backend.operations import payload_diff
from backend.payloads import normalise
from backend.subscriptions import schema_errors
from backend.values import EDITABLE_STATUSES, Status


@dataclass
class EditPreview:
    message: dict[str, Any]
    payload: Any = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    diff: str = ""

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message["_id"],
            "version": self.message.get("version", 1),
            "valid": self.valid,
            "errors": self.errors,
            "diff": self.diff,
            "changed": bool(self.diff),
            "payload": self.payload,
        }


def preview_edit(backend: Backend, message_id: str, payload: Any) -> EditPreview:
    """Raises UnknownMessage / StoreError; schema and payload problems come back as `errors`."""
    doc = backend.ledger.message(message_id)
    preview = EditPreview(message=doc)
    if doc["status"] not in EDITABLE_STATUSES:
        preview.errors = [{"path": "$", "message": f"the message is {doc['status']}: only pending, queued, held or failed messages can be edited"}]
        return preview
    try:
        payload = normalise(payload, backend.settings.max_payload_bytes)
    except ValidationError as exc:
        preview.errors = [{"path": "$", "message": str(exc)}]
        return preview
    preview.payload = payload
    schema = backend.ledger.actor(doc["actor"]).get("schema")
    preview.errors = [dict(e, actor=doc["actor"]) for e in schema_errors(schema, payload)]
    preview.diff = payload_diff(doc["payload"], payload)
    return preview


def save_and_replay(backend: Backend, message_id: str, payload: Any, by: str, expected_version: int) -> dict[str, Any]:
    """Save the payload (validated, at `expected_version`), then ask for the replay: one action.

    Refused before anything is written when the message is not failed (only a failed message can be
    replayed); when the edit is refused (SchemaViolation, Conflict on the version or the state)
    nothing is replayed. An unchanged payload is replayed as it is."""
    doc = backend.ledger.message(message_id)
    if doc["status"] != Status.FAILED.value:
        raise Conflict(f"message {message_id} is {doc['status']}: only a failed message can be saved and replayed")
    backend.operations.edit(message_id, payload, by, expected_version=expected_version)
    return backend.operations.replay(message_id, by)
