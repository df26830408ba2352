"""Operator actions: pause, resume, edit, replay, cancel. Used by the console and the CLI.

Each action validates its input, changes the ledger with conditional single-document updates
(safe under concurrent callers, idempotent when repeated) and writes an audit entry. Running
connectors pick the change up from the ledger within FIFOQ_POLL_INTERVAL seconds, or when they
start if they were down.
"""
from __future__ import annotations

import difflib
import json
import logging
from typing import Any

from backend.audit import AuditEntry, AuditLog
from backend.broker import Publisher
from backend.errors import Conflict, FifoqError, SchemaViolation, ValidationError
from backend.ledger import Ledger, run_state
from backend.payloads import normalise
from backend.settings import Settings
from backend.subscriptions import schema_errors, validate_actor_name
from backend.values import EDITABLE_STATUSES, Envelope, QueueType, Status

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
    def __init__(self, settings: Settings, ledger: Ledger, audit: AuditLog, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.audit = audit
        self.publisher = publisher

    def _wake_key(self, doc: dict[str, Any], action: str, by: str) -> None:
        """For an actor with ordering keys: queue an instruction in the message's lane so that the
        consumer serving that lane runs the replay or releases the key, in lane order. Published now
        when the broker answers; otherwise the relay publishes it."""
        if doc.get("key") is None:
            return
        key_state = self.ledger.key_state(doc["actor"], doc["key"])
        if not key_state or (key_state.get("blocked") or {}).get("message_id") != doc["_id"]:
            return
        ctl = self.ledger.insert_control(doc["actor"], doc.get("lane", 0), doc["key"], action, doc["_id"], by)
        if self.publisher is None:
            return
        env = Envelope(ctl["_id"], ctl["actor"], ctl["seq"], ctl["event"], ctl["lane"])
        try:
            qtype = QueueType(self.ledger.actor(doc["actor"]).get("queue_type", self.settings.queue_type.value))
            if self.publisher.publish([env], {doc["actor"]: qtype}):
                self.ledger.mark_queued([ctl["_id"]])
        except FifoqError as exc:
            log.warning("actor=%s message=%s instruction left to the relay: %s", doc["actor"], ctl["_id"], exc)

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
        if doc["status"] not in EDITABLE_STATUSES:
            raise Conflict(f"message {message_id} is {doc['status']}: only pending, queued or failed messages can be edited")
        if expected_version is not None and int(doc.get("version", 1)) != expected_version:
            raise Conflict(
                f"message {message_id} is at version {doc.get('version', 1)}, not {expected_version}: reload and retry"
            )
        payload = normalise(payload, self.settings.max_payload_bytes)
        schema = self.ledger.actor(doc["actor"]).get("schema")
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
            if doc["status"] == Status.FAILED.value and doc.get("replay_requested"):
                self.audit.record(AuditEntry(by, "replay", doc["actor"], message_id, changed=False))
                return doc  # already requested: idempotent
            raise Conflict(f"message {message_id} is {doc['status']}: only a failed message can be replayed")
        self._wake_key(after, "replay", by)
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
            raise Conflict(f"message {message_id} is {doc['status']}: only pending, queued or failed messages can be cancelled")
        # Second document: if we stop between the two writes, the connector repairs it (it
        # unblocks an actor whose blocking message is settled).
        self.ledger.clear_blocked(doc["actor"], message_id)
        self._wake_key(after, "release", by)
        self.audit.record(AuditEntry(by, "cancel", doc["actor"], message_id, details={"reason": reason, "previous_status": doc["status"]}))
        log.info("actor=%s message=%s cancelled by %s: %s", doc["actor"], message_id, by, reason)
        return after

    def actor_summary(self, actor: str) -> dict[str, Any]:
        doc = self.ledger.actor(actor)
        return dict(doc, state=run_state(doc).value)
