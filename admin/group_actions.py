"""Actions on a failure group: replay all, cancel all, and one JSON Patch (RFC 6902) for all.

Each action goes message by message through backend.operations.Operations (which checks the
state, the schema and the version, and audits each message), so one refusal never stops the
others: every message gets its own outcome and reason. Each action also writes one summary audit
entry naming the group and every message it touched.

A JSON Patch is applied with the `jsonpatch` library (RFC 6902, with RFC 6901 pointers), first as
a preview that writes nothing (per message: the new payload, its diff, the schema's verdict and
the version it was computed from), then for real with those versions as expected versions: a
message edited meanwhile is refused ("version moved"), not overwritten.
"""
from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from admin.failures import Group, fingerprint
from backend.app import Backend
from backend.audit import AuditEntry
from backend.errors import Conflict, FifoqError, UnknownMessage, ValidationError
from backend.operations import payload_diff
from backend.payloads import normalise
from backend.subscriptions import schema_errors
from backend.values import Status

log = logging.getLogger(__name__)

MAX_PATCH_OPERATIONS = 100
MAX_PATCH_CHARS = 64 * 1024
_OPS_NEEDING = {"add": "value", "replace": "value", "test": "value", "move": "from", "copy": "from", "remove": None}


def parse_patch(raw: Any) -> jsonpatch.JsonPatch:
    """A JSON Patch from a JSON list, or from its text (a form field). Raises ValidationError
    with what is wrong and where (operation index, line and column for text)."""
    if isinstance(raw, str):
        raw = _patch_text(raw)
    if not isinstance(raw, list) or not raw:
        raise ValidationError("a JSON Patch is a non-empty list of operations (RFC 6902)")
    if len(raw) > MAX_PATCH_OPERATIONS:
        raise ValidationError(f"a patch has at most {MAX_PATCH_OPERATIONS} operations")
    for i, op in enumerate(raw):
        _check_operation(i, op)
    try:
        return jsonpatch.JsonPatch(raw)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise ValidationError(f"invalid JSON Patch: {exc}") from None


def _patch_text(raw: str) -> Any:
    if len(raw) > MAX_PATCH_CHARS:
        raise ValidationError(f"the patch is longer than {MAX_PATCH_CHARS} characters")
    if not raw.strip():
        raise ValidationError('the patch is required: a JSON list such as [{"op": "replace", "path": "/currency", "value": "EUR"}]')
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"the patch is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValidationError("the patch is nested too deeply") from None


def _check_operation(i: int, op: Any) -> None:
    if not isinstance(op, dict):
        raise ValidationError(f"operation {i} is not a JSON object")
    name = op.get("op")
    if name not in _OPS_NEEDING:
        raise ValidationError(f"operation {i}: 'op' must be one of {', '.join(_OPS_NEEDING)}, not {name!r}")
    for member in ("path", _OPS_NEEDING[name]):
        if member is None:
            continue
        if member not in op:
            raise ValidationError(f"operation {i} ({name}) needs a '{member}' member")
        value = op[member]
        if member in ("path", "from") and (not isinstance(value, str) or (value and not value.startswith("/"))):
            raise ValidationError(f"operation {i}: '{member}' must be a JSON Pointer such as \"/currency\"")


def apply_patch(patch: jsonpatch.JsonPatch, payload: Any) -> Any:
    """The patched copy of `payload`. Raises ValidationError saying why the patch does not apply
    to this payload (a path that does not exist, a failed `test`...)."""
    try:
        return patch.apply(copy.deepcopy(payload))
    except jsonpatch.JsonPatchTestFailed as exc:
        raise ValidationError(f"the patch's test failed: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise ValidationError(f"the patch does not apply: {exc}") from None
    except (TypeError, KeyError, IndexError) as exc:
        raise ValidationError(f"the patch does not apply: {type(exc).__name__}: {exc}") from None


@dataclass
class ItemOutcome:
    message_id: str
    actor: str | None = None
    seq: int | None = None
    key: str | None = None
    outcome: str = ""  # applied / unchanged / refused (patch); replayed / cancelled / refused
    reason: str = ""
    version: int | None = None
    diff: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    payload: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "actor": self.actor, "seq": self.seq, "key": self.key,
                "outcome": self.outcome, "reason": self.reason, "version": self.version, "diff": self.diff,
                "errors": self.errors, "payload": self.payload}


@dataclass
class GroupResult:
    action: str
    fingerprint: str
    items: list[ItemOutcome]
    operation: str = ""

    def count(self, outcome: str) -> int:
        return sum(1 for i in self.items if i.outcome == outcome)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for i in self.items:
            counts[i.outcome] = counts.get(i.outcome, 0) + 1
        return {"action": self.action, "fingerprint": self.fingerprint, "operation": self.operation or None,
                "counts": counts, "items": [i.to_dict() for i in self.items]}


def _chosen(group: Group, message_ids: Sequence[str] | None) -> tuple[list[dict[str, Any]], list[ItemOutcome]]:
    """The group's members the caller named (all of them when None), and a refusal for each named
    message that is not in the group any more (repaired meanwhile, or never was)."""
    if message_ids is None:
        return list(group.members), []
    if not isinstance(message_ids, (list, tuple)) or not all(isinstance(i, str) for i in message_ids):
        raise ValidationError("message_ids must be a list of message ids")
    by_id = {m["id"]: m for m in group.members}
    chosen = [by_id[i] for i in dict.fromkeys(message_ids) if i in by_id]
    gone = [ItemOutcome(i, outcome="refused", reason="not in this failure group any more (repaired, or failing differently)")
            for i in dict.fromkeys(message_ids) if i not in by_id]
    return chosen, gone


def _item(member: dict[str, Any]) -> ItemOutcome:
    return ItemOutcome(member["id"], member["actor"], member["seq"], member.get("key"))


def _summary(backend: Backend, by: str, action: str, result: GroupResult, **details: Any) -> None:
    backend.audit.record(AuditEntry(by, action, details=dict(
        details, fingerprint=result.fingerprint, operation=result.operation or None,
        counts=result.to_dict()["counts"],
        messages=[{"message_id": i.message_id, "actor": i.actor, "outcome": i.outcome, "reason": i.reason or None}
                  for i in result.items])))


def replay_all(backend: Backend, group: Group, by: str, message_ids: Sequence[str] | None = None) -> GroupResult:
    """Ask for a replay of every (named) failed message of the group."""
    members, items = _chosen(group, message_ids)
    for m in members:
        item = _item(m)
        try:
            backend.operations.replay(m["id"], by)
            item.outcome = "replayed"
        except (Conflict, ValidationError, UnknownMessage) as exc:
            item.outcome, item.reason = "refused", str(exc)
        items.append(item)
    result = GroupResult("replay", group.fingerprint, items)
    _summary(backend, by, "group.replay", result, error=f"{group.type}: {group.message}")
    log.info("group=%s replay by %s: %s", group.fingerprint, by, result.to_dict()["counts"])
    return result


def cancel_all(backend: Backend, group: Group, by: str, reason: Any, message_ids: Sequence[str] | None = None) -> GroupResult:
    """Cancel every (named) failed message of the group, with one reason. Final for each message."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("a reason is required to cancel a group")
    members, items = _chosen(group, message_ids)
    for m in members:
        item = _item(m)
        try:
            backend.operations.cancel(m["id"], by, reason)
            item.outcome = "cancelled"
        except (Conflict, ValidationError, UnknownMessage) as exc:
            item.outcome, item.reason = "refused", str(exc)
        items.append(item)
    result = GroupResult("cancel", group.fingerprint, items)
    _summary(backend, by, "group.cancel", result, reason=reason.strip(), error=f"{group.type}: {group.message}")
    log.info("group=%s cancel by %s: %s", group.fingerprint, by, result.to_dict()["counts"])
    return result


def _patched(backend: Backend, doc: dict[str, Any], patch: jsonpatch.JsonPatch, item: ItemOutcome) -> Any | None:
    """The validated patched payload of `doc`, or None with `item` marked refused and why."""
    try:
        payload = normalise(apply_patch(patch, doc["payload"]), backend.settings.max_payload_bytes)
    except ValidationError as exc:
        item.outcome, item.reason = "refused", str(exc)
        return None
    item.payload = payload
    item.diff = payload_diff(doc["payload"], payload)
    item.errors = [dict(e, actor=doc["actor"]) for e in schema_errors(backend.ledger.actor(doc["actor"]).get("schema"), payload)]
    if item.errors:
        first = item.errors[0]
        item.outcome = "refused"
        item.reason = f"the schema of {doc['actor']!r} refuses the patched payload at {first['path']}: {first['message']}"
        return None
    return payload


def preview_patch(backend: Backend, group: Group, patch: jsonpatch.JsonPatch,
                  message_ids: Sequence[str] | None = None) -> GroupResult:
    """What the patch would do to each failed message of the group; writes nothing. Outcomes:
    `applies` (with its diff and the version it was computed from), `unchanged`, `refused`."""
    members, items = _chosen(group, message_ids)
    for m in members:
        item = _item(m)
        doc = backend.ledger.message(m["id"])
        item.version = int(doc.get("version", 1))
        if _patched(backend, doc, patch, item) is not None:
            item.outcome = "applies" if item.diff else "unchanged"
        items.append(item)
    return GroupResult("patch-preview", group.fingerprint, items)


def apply_group_patch(backend: Backend, fp: str, patch: jsonpatch.JsonPatch, expected_versions: Mapping[str, Any],
                      by: str) -> GroupResult:
    """Apply the patch to each previewed message at the version its preview was computed from.

    `expected_versions` ({message id: version}, from the preview) names the messages: a message
    added to the group since the preview is not touched. A message is refused, the others still
    applied, when it left the group (repaired, failing differently), its version moved, the patch
    no longer applies, or the actor's schema refuses the result. Audited as one operation: one
    `group.patch` entry per message and one summary (plus Operations.edit's own `edit` entry,
    with the diff, for each applied message)."""
    if not isinstance(expected_versions, Mapping) or not expected_versions:
        raise ValidationError("expected_versions is required: {message id: version} from the preview")
    for mid, version in expected_versions.items():
        if not isinstance(mid, str) or not isinstance(version, int) or isinstance(version, bool):
            raise ValidationError("expected_versions maps message ids to integer versions")
    result = GroupResult("patch", fp, [], operation=uuid.uuid4().hex[:16])
    for mid, expected in expected_versions.items():
        item = ItemOutcome(mid, version=expected)
        result.items.append(item)
        try:
            doc = backend.ledger.message(mid)
        except UnknownMessage as exc:
            item.outcome, item.reason = "refused", str(exc)
            continue
        item.actor, item.seq, item.key = doc["actor"], doc["seq"], doc.get("key")
        if doc["status"] != Status.FAILED.value or fingerprint(doc.get("last_error")) != fp:
            item.outcome = "refused"
            item.reason = f"not in this failure group any more (now {doc['status']})"
            continue
        if int(doc.get("version", 1)) != expected:
            item.outcome = "refused"
            item.reason = f"version moved from {expected} to {doc.get('version', 1)} since the preview: preview again"
            continue
        payload = _patched(backend, doc, patch, item)
        if payload is None:
            continue
        if not item.diff:
            item.outcome, item.reason = "unchanged", "the patch changes nothing in this payload"
            continue
        try:
            after = backend.operations.edit(mid, payload, by, expected_version=expected)
        except FifoqError as exc:  # Conflict (version or state moved), SchemaViolation, ValidationError
            item.outcome, item.reason = "refused", str(exc)
            continue
        item.outcome, item.version = "applied", int(after.get("version", expected + 1))
    for item in result.items:
        backend.audit.record(AuditEntry(by, "group.patch", item.actor, item.message_id, changed=item.outcome == "applied",
                                        details={"operation": result.operation, "fingerprint": fp, "outcome": item.outcome,
                                                 "reason": item.reason or None, "version": item.version}))
    _summary(backend, by, "group.patch", result, patch=patch.patch)
    log.info("group=%s patch %s by %s: %s", fp, result.operation, by, result.to_dict()["counts"])
    return result
