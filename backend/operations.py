"""Operator actions: pause, resume, edit, replay, cancel. Used by the console and the CLI.

Each action validates its input, makes one conditional single-document write of intent in the
ledger (safe under concurrent callers; retrying it after any error converges: an action already
carried out answers "already done") and writes an audit entry. The lane's connector carries it
out: a blocked lane or key looks at its failed message every FIFOQ_POLL_INTERVAL seconds, and a
connector that was down finds it when it starts. Nothing else has to reach the connector, so
nothing can be lost on the way.
"""
from __future__ import annotations

import difflib
import json
import logging
from typing import Any

from backend import transitions as tr
from backend.audit import AuditEntry, AuditLog
from backend.errors import Conflict, SchemaViolation, ValidationError
from backend.ledger import Ledger
from backend.payloads import normalise
from backend.settings import Settings
from backend.subscriptions import schema_errors, validate_actor_name
from backend.values import Status

log = logging.getLogger(__name__)

MAX_REASON = 500
MAX_USER = 100


def _text(value: Any, what: str, limit: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValidationError(f"{what} is required")
    if len(value) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} contains invalid Unicode (lone surrogates)") from None
    return value.strip()


def payload_diff(old: Any, new: Any) -> str:
    a = json.dumps(old, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    b = json.dumps(new, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "before", "after", lineterm=""))


class Operations:
    def __init__(self, settings: Settings, ledger: Ledger, audit: AuditLog) -> None:
        self.settings = settings
        self.ledger = ledger
        self.audit = audit

    # -- actors --------------------------------------------------------------------------
    def pause(self, actor: str, by: str, reason: str) -> dict[str, Any]:
        """Stop delivering to `actor` (its queue keeps filling). Idempotent."""
        validate_actor_name(actor)
        by, reason = _text(by, "user", MAX_USER), _text(reason, "a reason", MAX_REASON)
        changed = self.ledger.set_paused(actor, by, reason)
        self.audit.record(AuditEntry(by, "pause", actor=actor, changed=changed, details={"reason": reason}))
        log.info("actor=%s paused by %s (changed=%s): %s", actor, by, changed, reason)
        return self.ledger.actor(actor)

    def resume(self, actor: str, by: str) -> dict[str, Any]:
        validate_actor_name(actor)
        by = _text(by, "user", MAX_USER)
        before = self.ledger.actor(actor)
        changed = self.ledger.clear_paused(actor)
        self.audit.record(
            AuditEntry(by, "resume", actor=actor, changed=changed, details={"was_paused": before.get("paused")})
        )
        log.info("actor=%s resumed by %s (changed=%s)", actor, by, changed)
        return self.ledger.actor(actor)

    # -- messages ------------------------------------------------------------------------
    def edit(self, message_id: str, payload: Any, by: str, expected_version: int | None = None) -> dict[str, Any]:
        """Replace the payload of a failed or not-yet-processed message, in place (same id, same
        position). Validated against the actor's schema; the change is kept with its diff."""
        by = _text(by, "user", MAX_USER)
        doc = self.ledger.message(message_id)
        if not tr.is_editable(doc["status"]):
            raise Conflict(f"message {message_id} is {doc['status']}: only pending, queued, held or failed messages can be edited")
        if expected_version is not None and int(doc.get("version", 1)) != expected_version:
            raise Conflict(
                f"message {message_id} is at version {doc.get('version', 1)}, not {expected_version}: reload and retry"
            )
        payload = normalise(payload, self.settings.max_payload_bytes)
        schema = self.ledger.actor_doc(doc["actor"]).get("schema")
        errors = schema_errors(schema, payload)
        if errors:
            raise SchemaViolation(
                f"payload rejected by the schema of {doc['actor']!r} at {errors[0]['path']}: {errors[0]['message']}",
                [dict(e, actor=doc["actor"]) for e in errors],
            )
        diff = payload_diff(doc["payload"], payload)
        if not diff:
            self.audit.record(AuditEntry(by, "edit", doc["actor"], message_id, changed=False))
            return doc
        after = self.ledger.replace_payload(doc, payload, by, diff)
        self.audit.record(
            AuditEntry(by, "edit", doc["actor"], message_id, details={"version": after["version"], "diff": diff})
        )
        log.info("actor=%s message=%s edited by %s to version %d", doc["actor"], message_id, by, after["version"])
        return after

    def replay(self, message_id: str, by: str) -> dict[str, Any]:
        """Ask the connector to run the failed head message again (after an edit, or a fix)."""
        by = _text(by, "user", MAX_USER)
        doc = self.ledger.message(message_id)
        after = self.ledger.request_replay(message_id, by)
        if after is None:
            doc = self.ledger.message(message_id)
            requested = doc["status"] == Status.FAILED.value and doc.get("replay_requested")
            # A replay already under way or carried out (this request's first try may have
            # landed before its answer was lost): retrying converges instead of failing.
            carried_out = doc["status"] in (Status.PROCESSING.value, Status.DONE.value) and any(
                a.get("outcome") == Status.FAILED.value for a in doc.get("attempt_log") or [])
            if requested or carried_out:
                self.audit.record(AuditEntry(by, "replay", doc["actor"], message_id, changed=False))
                return doc
            raise Conflict(f"message {message_id} is {doc['status']}: only a failed message can be replayed")
        self.audit.record(AuditEntry(by, "replay", doc["actor"], message_id, details={"version": after.get("version", 1)}))
        log.info("actor=%s message=%s replay requested by %s", doc["actor"], message_id, by)
        return after

    def cancel(self, message_id: str, by: str, reason: str) -> dict[str, Any]:
        """Never process this message; it stays in the ledger as a tombstone. If it is the message
        blocking its actor, the actor is unblocked and its queue drains in order."""
        by, reason = _text(by, "user", MAX_USER), _text(reason, "a reason", MAX_REASON)
        doc = self.ledger.message(message_id)
        after = self.ledger.cancel(message_id, by, reason)
        if after is None:
            doc = self.ledger.message(message_id)
            if doc["status"] == Status.CANCELLED.value:
                self.audit.record(AuditEntry(by, "cancel", doc["actor"], message_id, changed=False))
                return doc
            raise Conflict(f"message {message_id} is {doc['status']}: only pending, queued, held or failed messages can be cancelled")
        self.audit.record(AuditEntry(by, "cancel", doc["actor"], message_id, details={"reason": reason, "previous_status": doc["status"]}))
        log.info("actor=%s message=%s cancelled by %s: %s", doc["actor"], message_id, by, reason)
        return after
