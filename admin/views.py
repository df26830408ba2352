"""HTML pages: overview, actor, message, audit, users. Every action is a POST form with a CSRF
token, performed by backend.operations (which writes the audit log), then a redirect."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from admin import accounts
from admin.auth import acting_user, require_role
from admin.board import actor_detail, build_overview
from admin.editing import preview_edit, save_and_replay
from admin.params import message_filter, page_param, parse_json_text, pretty_json, text_filter
from admin.rabbitmq_api import RabbitAPI
from admin.users import Role, UserStore
from backend import ledger as ledger_module
from backend import ledger_search, search_terms
from backend.app import Backend
from backend.errors import Conflict, NotFound, ValidationError

log = logging.getLogger(__name__)

bp = Blueprint("views", __name__)

AUDIT_ACTIONS = ("pause", "resume", "edit", "replay", "cancel", "user.create", "user.role", "user.activate",
                 "user.deactivate", "user.password", "token.create", "token.revoke", "login", "logout", "login.throttled",
                 # the failures board (admin.group_actions, admin.releases)
                 "group.replay", "group.cancel", "group.patch", "release.start", "release.canary", "release.stop",
                 "release.done", "release.abort")


def backend() -> Backend:
    return current_app.extensions["fifoq"]


def mgmt() -> RabbitAPI:
    return current_app.extensions["fifoq_mgmt"]


def user_store() -> UserStore:
    return current_app.extensions["fifoq_users"]


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"Role": Role, "current_user": current_user, "refresh": _refresh_seconds()}


def _refresh_seconds() -> int | None:
    """`?refresh=N` reloads the page every N seconds (a meta refresh: no script needed)."""
    try:
        value = int(request.args.get("refresh", ""))
    except ValueError:
        return None
    return min(max(value, 2), 300) if request.method == "GET" else None


# -- overview ------------------------------------------------------------------------------
@bp.route("/")
@require_role(Role.VIEWER)
def overview() -> Any:
    name = text_filter(request.args, "name") or ""
    blocked_only = request.args.get("blocked") in ("1", "on", "true")
    board = build_overview(backend(), mgmt(), name=name, blocked_only=blocked_only)
    status = 503 if board.ledger_error else 200
    return render_template("overview.html", board=board, name=name, blocked_only=blocked_only), status


# -- actor -----------------------------------------------------------------------------------
@bp.route("/actors/<name>")
@require_role(Role.VIEWER)
def actor(name: str) -> Any:
    detail = actor_detail(backend(), mgmt(), name)
    try:
        flt = message_filter(request.args)
        page = page_param(request.args)
    except ValidationError as exc:
        flash(str(exc), "error")
        return redirect(url_for("views.actor", name=name))
    docs, total = backend().ledger.find(
        actor=name, status=flt.status, event=flt.event, since=flt.since, until=flt.until, text=flt.text,
        skip=page.skip, limit=page.per_page, newest_first=flt.newest_first,
    )
    return render_template("actor.html", a=detail, messages=docs, total=total, page=page, flt=flt,
                           pages=page.count(total), count_cap=ledger_search.COUNT_CAP,
                           search_words=search_terms.words(flt.text or ""), walk_cap=ledger_module.WALK_CAP)


@bp.route("/actors/<name>/pause", methods=["POST"])
@require_role(Role.OPERATOR)
def pause(name: str) -> Any:
    try:
        backend().operations.pause(name, acting_user(), request.form.get("reason", ""))
        flash(f"Actor {name} paused.", "info")
    except (ValidationError, Conflict) as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.actor", name=name))


@bp.route("/actors/<name>/resume", methods=["POST"])
@require_role(Role.OPERATOR)
def resume(name: str) -> Any:
    try:
        backend().operations.resume(name, acting_user())
        flash(f"Actor {name} resumed.", "info")
    except (ValidationError, Conflict) as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.actor", name=name))


# -- message ---------------------------------------------------------------------------------
def _message_page(message_id: str, *, editor_text: str | None = None, errors: list[dict[str, Any]] | None = None,
                  status: int = 200) -> Any:
    doc = backend().ledger.message(message_id)
    actor_doc = backend().ledger.actor(doc["actor"])
    text = editor_text if editor_text is not None else pretty_json(doc["payload"])
    return render_template("message.html", m=doc, actor=actor_doc, editor_text=text, errors=errors or [],
                           audit=backend().audit.find(message_id=message_id, limit=50)[0]), status


@bp.route("/messages/<message_id>")
@require_role(Role.VIEWER)
def message(message_id: str) -> Any:
    return _message_page(message_id)


@bp.route("/messages/<message_id>/edit", methods=["POST"])
@require_role(Role.OPERATOR)
def edit(message_id: str) -> Any:
    """Step 1 (no `confirm`): validate and show the diff. Step 2 (`confirm=1`): save."""
    raw = request.form.get("payload", "")
    try:
        payload = parse_json_text(raw)
    except ValidationError as exc:
        return _message_page(message_id, editor_text=raw, errors=exc.details or [{"path": "$", "message": str(exc)}], status=400)
    and_replay = request.form.get("and_replay") == "1"  # "Save and replay": one action, see save_and_replay
    if request.form.get("confirm") != "1":
        preview = preview_edit(backend(), message_id, payload)
        if not preview.valid:
            return _message_page(message_id, editor_text=raw, errors=preview.errors, status=422)
        if not preview.diff and not and_replay:
            flash("The payload is unchanged: nothing to save.", "info")
            return redirect(url_for("views.message", message_id=message_id))
        return render_template("confirm_edit.html", m=preview.message, preview=preview,
                               payload_text=pretty_json(preview.payload), and_replay=and_replay)
    try:
        expected = int(request.form.get("expected_version", ""))
    except ValueError:
        return _message_page(message_id, editor_text=raw, errors=[{"path": "$", "message": "expected_version is missing"}], status=400)
    try:
        if and_replay:
            after = save_and_replay(backend(), message_id, payload, acting_user(), expected)
        else:
            after = backend().operations.edit(message_id, payload, acting_user(), expected_version=expected)
    except Conflict as exc:
        flash(str(exc) + (" Nothing was replayed." if and_replay else ""), "error")
        return redirect(url_for("views.message", message_id=message_id))
    except ValidationError as exc:
        return _message_page(message_id, editor_text=raw, errors=exc.details or [{"path": "$", "message": str(exc)}],
                             status=exc.http_status)
    if and_replay:
        flash(f"Saved as version {after.get('version', 1)} and replay requested: the connector runs it within a moment.", "info")
    else:
        flash(f"Saved as version {after.get('version', 1)}. Replay the message to run it again.", "info")
    return redirect(url_for("views.message", message_id=message_id))


@bp.route("/messages/<message_id>/replay", methods=["POST"])
@require_role(Role.OPERATOR)
def replay(message_id: str) -> Any:
    try:
        backend().operations.replay(message_id, acting_user())
        flash("Replay requested: the connector runs the message again within a moment.", "info")
    except (ValidationError, Conflict) as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.message", message_id=message_id))


@bp.route("/messages/<message_id>/cancel", methods=["POST"])
@require_role(Role.OPERATOR)
def cancel(message_id: str) -> Any:
    if request.form.get("confirm") != "yes":
        flash("Tick the confirmation box to cancel the message: it will never be processed.", "error")
        return redirect(url_for("views.message", message_id=message_id))
    try:
        backend().operations.cancel(message_id, acting_user(), request.form.get("reason", ""))
        flash("Message cancelled: it stays in the ledger as a tombstone.", "info")
    except (ValidationError, Conflict) as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.message", message_id=message_id))


# -- audit -----------------------------------------------------------------------------------
@bp.route("/audit")
@require_role(Role.VIEWER)
def audit() -> Any:
    filters = {k: text_filter(request.args, k) for k in ("user", "actor", "action")}
    page = page_param(request.args, 100)
    rows, total = backend().audit.find(user=filters["user"], actor=filters["actor"], action=filters["action"],
                                       skip=page.skip, limit=page.per_page)
    return render_template("audit.html", rows=rows, total=total, filters=filters, page=page, pages=page.count(total),
                           actions=AUDIT_ACTIONS, page_args={k: v for k, v in filters.items() if v})


# -- users (admin) ---------------------------------------------------------------------------
@bp.route("/users")
@require_role(Role.ADMIN)
def users() -> Any:
    return _users_page()


def _users_page(new_token: dict[str, Any] | None = None) -> Any:
    tokens = user_store().tokens()
    return render_template("users.html", users=user_store().all(), tokens=tokens, new_token=new_token, ask=Ask,
                           token_count=Counter(t["user"] for t in tokens))


def _account_change(change: Callable[[], str], refused: tuple[type[Exception], ...] = (ValidationError, NotFound)) -> Any:
    """Run one change of the Users page; flash what it did, or why it was refused; back to the page."""
    try:
        flash(change(), "info")
    except refused as exc:
        flash(str(exc), "error")
    return redirect(url_for("views.users"))


@bp.route("/users", methods=["POST"])
@require_role(Role.ADMIN)
def create_user() -> Any:
    def change() -> str:
        user = accounts.create_user(user_store(), backend().audit, acting_user(), request.form.get("username", ""),
                                    request.form.get("password", ""), request.form.get("role", ""))
        return f"User {user.name} created ({user.role.value})."

    return _account_change(change, (ValidationError, Conflict))


ROLE_POWERS = {
    Role.VIEWER.value: "reads every page and changes nothing",
    Role.OPERATOR.value: "pauses, resumes, edits, replays and cancels",
    Role.ADMIN.value: "also manages users and API tokens",
}


class Ask:
    """The questions of the Users page's destructive changes (deactivate, role change, token
    revocation): the same words in the page's dialog (data-confirm) and on the confirmation page."""

    @staticmethod
    def deactivate(name: str, tokens: int) -> tuple[str, str]:
        return (f"Deactivate {name}?",
                f"{name} can no longer log in, their open sessions end at their next request and their {tokens} "
                "API token(s) stop working. You can reactivate the account later.")

    @staticmethod
    def role(name: str, old: str, new: str) -> tuple[str, str]:
        return (f"Change the role of {name} from {old} to {new}?",
                f"As {new}, {name} {ROLE_POWERS.get(new, '')}. It applies at their next request.")

    @staticmethod
    def revoke(record: dict[str, Any]) -> tuple[str, str]:
        label = f" ({record['label']})" if record.get("label") else ""
        return (f"Revoke API token {record['_id']}{label} of {record['user']}?",
                "Every client using it is refused (401) from now on. This cannot be undone: a new token would "
                "have to be created and handed out.")

    @staticmethod
    def text(question: tuple[str, str]) -> str:
        return " ".join(question)


def _confirmation(question: tuple[str, str]) -> Any | None:
    """The confirmation page of a destructive change of the Users page, unless the request says
    `confirm=yes`. The page's script asks in a dialog and adds it; without script, this page asks
    and posts the same fields again."""
    if request.form.get("confirm") == "yes":
        return None
    fields = [(k, v) for k, v in request.form.items(multi=True) if k not in ("csrf_token", "confirm")]
    return render_template("confirm_action.html", question=question[0], consequence=question[1], action=request.path,
                           fields=fields, back=url_for("views.users"))


@bp.route("/users/<name>/role", methods=["POST"])
@require_role(Role.ADMIN)
def set_role(name: str) -> Any:
    role = request.form.get("role", "")
    current = user_store().get(name)
    if current is not None and name != acting_user() and role in ROLE_POWERS and role != current.role.value:
        asked = _confirmation(Ask.role(name, current.role.value, role))
        if asked is not None:
            return asked

    def change() -> str:
        user = accounts.set_role(user_store(), backend().audit, acting_user(), name, role)
        return f"{name} is now {user.role.value}."

    return _account_change(change)


@bp.route("/users/<name>/active", methods=["POST"])
@require_role(Role.ADMIN)
def set_active(name: str) -> Any:
    active = request.form.get("active") == "1"
    if not active and name != acting_user() and user_store().get(name) is not None:
        asked = _confirmation(Ask.deactivate(name, len(user_store().tokens(name))))
        if asked is not None:
            return asked

    def change() -> str:
        user = accounts.set_active(user_store(), backend().audit, acting_user(), name, active)
        return f"{name} is now {'active' if user.active else 'deactivated'}."

    return _account_change(change)


@bp.route("/users/<name>/password", methods=["POST"])
@require_role(Role.ADMIN)
def reset_password(name: str) -> Any:
    def change() -> str:
        accounts.reset_password(user_store(), backend().audit, acting_user(), name, request.form.get("password", ""))
        return f"Password of {name} changed."

    return _account_change(change)


@bp.route("/users/<name>/tokens", methods=["POST"])
@require_role(Role.ADMIN)
def create_token(name: str) -> Any:
    try:
        token, record = accounts.create_token(user_store(), backend().audit, acting_user(), name,
                                              request.form.get("label", ""))
    except (ValidationError, NotFound) as exc:
        flash(str(exc), "error")
        return redirect(url_for("views.users"))
    # Shown once, in this response only: not stored in clear, not put in the session.
    return _users_page({"user": name, "token": token, "id": record["_id"]})


@bp.route("/tokens/<token_id>/revoke", methods=["POST"])
@require_role(Role.ADMIN)
def revoke_token(token_id: str) -> Any:
    record = user_store().token(token_id)
    if record is not None:
        asked = _confirmation(Ask.revoke(record))
        if asked is not None:
            return asked

    def change() -> str:
        accounts.revoke_token(user_store(), backend().audit, acting_user(), token_id)
        return f"Token {token_id} revoked."

    return _account_change(change, (NotFound,))
