"""The JSON API of the failures board, the staged releases and save-and-replay, under /api/
(same authentication, roles, CSRF and error format as admin.api; see docs/api.md)."""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint

from admin.api import body, ok
from admin.auth import acting_user, require_role
from admin.editing import save_and_replay
from admin.failures import build_board, group_of
from admin.group_actions import apply_group_patch, cancel_all, parse_patch, preview_patch, replay_all
from admin.params import text_filter
from admin.repair_views import backend, plans
from admin.users import Role
from backend.errors import ValidationError

log = logging.getLogger(__name__)

bp = Blueprint("repair_api", __name__)


def _ids(data: dict[str, Any]) -> list[str] | None:
    ids = data.get("message_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise ValidationError("message_ids must be a list of message ids")
    return ids


@bp.route("/failures")
@require_role(Role.VIEWER)
def failures() -> Any:
    """GET /api/failures -> {groups: [{fingerprint, type, message, frame, count, actors, first_seen,
    last_seen, sample, messages}], blocks, total_failed, blocked_actors, blocked_keys, truncated}"""
    return ok(build_board(backend()).to_dict())


@bp.route("/failures/<fp>")
@require_role(Role.VIEWER)
def group(fp: str) -> Any:
    """GET /api/failures/3f9a1c2b7d4e -> one group; 404 when no failed message has that fingerprint."""
    return ok(group_of(backend(), fp).to_dict())


@bp.route("/failures/<fp>/replay", methods=["POST"])
@require_role(Role.OPERATOR)
def replay(fp: str) -> Any:
    """POST /api/failures/<fp>/replay {"message_ids": [...] (optional: all)} -> {counts, items}"""
    data = body()
    return ok(replay_all(backend(), group_of(backend(), fp), acting_user(), _ids(data)).to_dict())


@bp.route("/failures/<fp>/cancel", methods=["POST"])
@require_role(Role.OPERATOR)
def cancel(fp: str) -> Any:
    """POST /api/failures/<fp>/cancel {"reason": "...", "confirm": true, "message_ids": [...] (optional)}"""
    data = body()
    if data.get("confirm") is not True:
        raise ValidationError('cancelling is final: send "confirm": true')
    return ok(cancel_all(backend(), group_of(backend(), fp), acting_user(), data.get("reason"), _ids(data)).to_dict())


@bp.route("/failures/<fp>/patch/preview", methods=["POST"])
@require_role(Role.OPERATOR)
def patch_preview(fp: str) -> Any:
    """POST /api/failures/<fp>/patch/preview {"patch": [RFC 6902 operations]} -> per message:
    {message_id, outcome: applies|unchanged|refused, reason, version, diff, errors, payload}; writes nothing."""
    data = body()
    if "patch" not in data:
        raise ValidationError("patch is required (a JSON Patch: a list of operations)")
    return ok(preview_patch(backend(), group_of(backend(), fp), parse_patch(data["patch"]), _ids(data)).to_dict())


@bp.route("/failures/<fp>/patch", methods=["POST"])
@require_role(Role.OPERATOR)
def patch(fp: str) -> Any:
    """POST /api/failures/<fp>/patch {"patch": [...], "expected_versions": {"<id>": 1, ...}} ->
    {operation, counts: {applied, refused, unchanged}, items}: 200 even when some are refused."""
    data = body()
    if "patch" not in data:
        raise ValidationError("patch is required (a JSON Patch: a list of operations)")
    return ok(apply_group_patch(backend(), fp, parse_patch(data["patch"]), data.get("expected_versions") or {}, acting_user()).to_dict())


@bp.route("/failures/<fp>/release", methods=["POST"])
@require_role(Role.OPERATOR)
def release(fp: str) -> Any:
    """POST /api/failures/<fp>/release {"canary": "<message id>" (optional: the group's first)} -> 201 the plan"""
    data = body()
    canary = data.get("canary")
    if canary is not None and not isinstance(canary, str):
        raise ValidationError("canary must be a message id")
    plan = plans().start(group_of(backend(), fp), acting_user(), canary)
    return ok(plans().with_statuses(plan), 201)


@bp.route("/releases")
@require_role(Role.VIEWER)
def releases() -> Any:
    """GET /api/releases?fingerprint=<fp> -> {items: [plans, running ones first]}"""
    from flask import request

    fp = text_filter(request.args, "fingerprint")
    return ok({"items": [plans().with_statuses(p) for p in plans().recent(fingerprint=fp)]})


@bp.route("/releases/<plan_id>")
@require_role(Role.VIEWER)
def release_plan(plan_id: str) -> Any:
    return ok(plans().with_statuses(plans().get(plan_id)))


@bp.route("/releases/<plan_id>/abort", methods=["POST"])
@require_role(Role.OPERATOR)
def abort(plan_id: str) -> Any:
    body()
    return ok(plans().with_statuses(plans().abort(plan_id, acting_user())))


@bp.route("/messages/<message_id>/save-and-replay", methods=["POST"])
@require_role(Role.OPERATOR)
def fix(message_id: str) -> Any:
    """POST /api/messages/<id>/save-and-replay {"payload": {...}, "expected_version": 1} -> the message,
    replay requested. The edit comes first: when it is refused (422 schema, 409 version or state),
    nothing is replayed."""
    data = body()
    if "payload" not in data:
        raise ValidationError("payload is required")
    expected = data.get("expected_version")
    if not isinstance(expected, int) or isinstance(expected, bool):
        raise ValidationError("expected_version is required (an integer): the version you edited")
    return ok(save_and_replay(backend(), message_id, data["payload"], acting_user(), expected))
