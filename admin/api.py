"""The JSON API under /api/: every page and action of the console, with the same roles.

Authenticate with the session cookie (state-changing calls then need the CSRF token in the
X-CSRFToken header; GET /api/me returns one) or with `Authorization: Bearer <token>`.
Errors are {"error": "...", "details": [...]} with the status of the backend's error
(400, 401, 403, 404, 409, 413, 422, 503). See docs/api.md for examples.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from admin import accounts, timefmt
from admin.auth import acting_user, require_role
from admin.board import actor_detail, blocked_keys, build_overview
from admin.editing import preview_edit
from admin.params import message_filter, page_param, text_filter
from admin.rabbitmq_api import RabbitAPI
from admin.users import Role, UserStore
from backend.app import Backend
from backend.errors import ValidationError

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


def backend() -> Backend:
    return current_app.extensions["fifoq"]


def mgmt() -> RabbitAPI:
    return current_app.extensions["fifoq_mgmt"]


def user_store() -> UserStore:
    return current_app.extensions["fifoq_users"]


def plain(value: Any) -> Any:
    """Ledger documents as JSON: datetimes in ISO 8601 (UTC, `Z`: admin.timefmt), `_id` kept as `id` too."""
    if isinstance(value, datetime):
        return timefmt.iso(value)
    if isinstance(value, dict):
        out = {str(k): plain(v) for k, v in value.items()}
        if "_id" in out and "id" not in out:
            out["id"] = out["_id"]
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def ok(value: Any, status: int = 200) -> Any:
    return jsonify(plain(value)), status


def body() -> dict[str, Any]:
    """The request's JSON object; 400 for anything else (malformed JSON, a list, a string...)."""
    data = request.get_json(silent=True, force=True) if request.get_data(cache=True) else {}
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object")
    return data


# -- who am I ---------------------------------------------------------------------------------
@bp.route("/me")
@require_role(Role.VIEWER)
def me() -> Any:
    """curl -H 'Authorization: Bearer fq_...' http://127.0.0.1:5000/api/me"""
    out = dict(current_user.to_dict(), auth=g.get("auth_via", "session"))
    if out["auth"] == "session":
        out["csrf_token"] = generate_csrf()
    return ok(out)


# -- overview and actors ------------------------------------------------------------------------
@bp.route("/overview")
@require_role(Role.VIEWER)
def overview() -> Any:
    """GET /api/overview?blocked=1&name=pay -> {actors: [...], broker, broker_error, ledger_error}"""
    board = build_overview(backend(), mgmt(), name=text_filter(request.args, "name") or "",
                           blocked_only=request.args.get("blocked") in ("1", "true", "on"))
    return ok(board.to_dict(), 503 if board.ledger_error else 200)


@bp.route("/broker")
@require_role(Role.VIEWER)
def broker() -> Any:
    """GET /api/broker -> cluster health (nodes up and down, alarms); 503 if unreachable."""
    return ok(mgmt().health())


@bp.route("/actors/<name>")
@require_role(Role.VIEWER)
def actor(name: str) -> Any:
    """GET /api/actors/payment -> state, blocked head with its error, counts, queue, consistency."""
    return ok(actor_detail(backend(), mgmt(), name))


@bp.route("/actors/<name>/keys")
@require_role(Role.VIEWER)
def keys(name: str) -> Any:
    """GET /api/actors/dossiers/keys -> the blocked ordering keys of an actor, each with its failed
    message, since when, the error and how many messages are held behind it."""
    backend().ledger.actor(name)  # 404 for an unknown actor
    return ok({"actor": name, "blocked_keys": blocked_keys(backend(), name)})


@bp.route("/actors/<name>/consistency")
@require_role(Role.VIEWER)
def consistency(name: str) -> Any:
    detail = actor_detail(backend(), mgmt(), name)
    return ok(dict(detail["consistency"], actor=name, queue=detail["queue"], broker_error=detail["broker_error"]))


@bp.route("/actors/<name>/messages")
@require_role(Role.VIEWER)
def messages(name: str) -> Any:
    """GET /api/actors/payment/messages?status=failed&event=tour.booked&since=2024-05-01&q=alice&sort=oldest&page=2

    Newest first unless sort=oldest. Each item is the ledger document plus `run_seconds` (how long
    the handler ran on the last attempt of a settled message) and `latency_seconds` (created to
    finished)."""
    backend().ledger.actor(name)
    flt = message_filter(request.args)
    page = page_param(request.args)
    docs, total = backend().ledger.find(actor=name, status=flt.status, event=flt.event, since=flt.since,
                                        until=flt.until, text=flt.text, skip=page.skip, limit=page.per_page,
                                        newest_first=flt.newest_first)
    items = [dict(d, run_seconds=timefmt.run_time(d), latency_seconds=timefmt.latency(d)) for d in docs]
    return ok({"items": items, "total": total, "page": page.number, "per_page": page.per_page,
               "pages": page.count(total), "sort": flt.sort})


@bp.route("/actors/<name>/pause", methods=["POST"])
@require_role(Role.OPERATOR)
def pause(name: str) -> Any:
    """POST /api/actors/payment/pause {"reason": "provider maintenance"}"""
    data = body()
    return ok(backend().operations.pause(name, acting_user(), data.get("reason", "")))


@bp.route("/actors/<name>/resume", methods=["POST"])
@require_role(Role.OPERATOR)
def resume(name: str) -> Any:
    body()
    return ok(backend().operations.resume(name, acting_user()))


# -- messages ----------------------------------------------------------------------------------
@bp.route("/messages/<message_id>")
@require_role(Role.VIEWER)
def message(message_id: str) -> Any:
    """GET /api/messages/<id> -> the ledger document: payload, status, history, attempt_log..."""
    return ok(backend().ledger.message(message_id))


@bp.route("/messages/<message_id>/preview", methods=["POST"])
@require_role(Role.OPERATOR)
def preview(message_id: str) -> Any:
    """POST /api/messages/<id>/preview {"payload": {...}} -> {valid, errors: [{path, message}], diff}.
    Writes nothing."""
    data = body()
    if "payload" not in data:
        raise ValidationError("payload is required")
    return ok(preview_edit(backend(), message_id, data["payload"]).to_dict())


@bp.route("/messages/<message_id>/payload", methods=["PUT", "POST"])
@require_role(Role.OPERATOR)
def edit(message_id: str) -> Any:
    """PUT /api/messages/<id>/payload {"payload": {...}, "expected_version": 1}
    422 with details [{path, message}] when the actor's schema refuses it; 409 if the version moved."""
    data = body()
    if "payload" not in data:
        raise ValidationError("payload is required")
    expected = data.get("expected_version")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        raise ValidationError("expected_version must be an integer")
    return ok(backend().operations.edit(message_id, data["payload"], acting_user(), expected_version=expected))


@bp.route("/messages/<message_id>/replay", methods=["POST"])
@require_role(Role.OPERATOR)
def replay(message_id: str) -> Any:
    body()
    return ok(backend().operations.replay(message_id, acting_user()))


@bp.route("/messages/<message_id>/cancel", methods=["POST"])
@require_role(Role.OPERATOR)
def cancel(message_id: str) -> Any:
    """POST /api/messages/<id>/cancel {"reason": "duplicate order", "confirm": true}"""
    data = body()
    if data.get("confirm") is not True:
        raise ValidationError('cancelling is final: send "confirm": true')
    return ok(backend().operations.cancel(message_id, acting_user(), data.get("reason", "")))


# -- audit ---------------------------------------------------------------------------------------
@bp.route("/audit")
@require_role(Role.VIEWER)
def audit() -> Any:
    """GET /api/audit?user=alice&actor=payment&action=edit&message_id=...&page=1"""
    filters = {k: text_filter(request.args, k) for k in ("user", "actor", "action", "message_id")}
    page = page_param(request.args, 100)
    rows, total = backend().audit.find(user=filters["user"], actor=filters["actor"], action=filters["action"],
                                       message_id=filters["message_id"], skip=page.skip, limit=page.per_page)
    return ok({"items": rows, "total": total, "page": page.number, "per_page": page.per_page, "pages": page.count(total)})


# -- users (admin) -------------------------------------------------------------------------------
@bp.route("/users")
@require_role(Role.ADMIN)
def users() -> Any:
    items = [{"name": u["_id"], "role": u["role"], "active": u.get("active", True), "created_at": u.get("created_at")}
             for u in user_store().all()]
    return ok({"items": items, "tokens": user_store().tokens()})


@bp.route("/users", methods=["POST"])
@require_role(Role.ADMIN)
def create_user() -> Any:
    """POST /api/users {"username": "bob", "password": "...", "role": "operator"} -> 201"""
    data = body()
    user = accounts.create_user(user_store(), backend().audit, acting_user(), data.get("username"),
                                data.get("password"), data.get("role"))
    return ok(user.to_dict(), 201)


@bp.route("/users/<name>/role", methods=["POST", "PUT"])
@require_role(Role.ADMIN)
def set_role(name: str) -> Any:
    """PUT /api/users/bob/role {"role": "viewer"}"""
    data = body()
    return ok(accounts.set_role(user_store(), backend().audit, acting_user(), name, data.get("role")).to_dict())


@bp.route("/users/<name>/active", methods=["POST", "PUT"])
@require_role(Role.ADMIN)
def set_active(name: str) -> Any:
    """PUT /api/users/bob/active {"active": false}"""
    data = body()
    return ok(accounts.set_active(user_store(), backend().audit, acting_user(), name, data.get("active")).to_dict())


@bp.route("/users/<name>/password", methods=["POST", "PUT"])
@require_role(Role.ADMIN)
def reset_password(name: str) -> Any:
    """PUT /api/users/bob/password {"password": "..."}"""
    data = body()
    accounts.reset_password(user_store(), backend().audit, acting_user(), name, data.get("password"))
    return ok({"name": name, "password_changed": True})


@bp.route("/users/<name>/tokens", methods=["POST"])
@require_role(Role.ADMIN)
def create_token(name: str) -> Any:
    """POST /api/users/bob/tokens {"label": "ci"} -> 201 {"token": "fq_...", ...} (shown once)"""
    data = body()
    token, record = accounts.create_token(user_store(), backend().audit, acting_user(), name, data.get("label"))
    return ok(dict(record, token=token), 201)


@bp.route("/tokens/<token_id>", methods=["DELETE"])
@require_role(Role.ADMIN)
def revoke_token(token_id: str) -> Any:
    accounts.revoke_token(user_store(), backend().audit, acting_user(), token_id)
    return ok({"revoked": token_id})
