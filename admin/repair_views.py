"""HTML pages of the failures board: the groups, one group with its actions (replay all, cancel
all, one JSON Patch for all, staged release), the staged releases. Forms carry the CSRF token like
every other form; the actions are performed by admin.group_actions and admin.releases (audited).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from admin.auth import acting_user, require_role
from admin.failures import Group, build_board, group_of
from admin.group_actions import apply_group_patch, cancel_all, parse_patch, preview_patch, replay_all
from admin.releases import ReleasePlans
from admin.users import Role
from backend.app import Backend
from backend.errors import Conflict, NotFound, ValidationError

log = logging.getLogger(__name__)

bp = Blueprint("repair", __name__)

PATCH_EXAMPLE = '[\n  {"op": "replace", "path": "/currency", "value": "EUR"}\n]'


def backend() -> Backend:
    return current_app.extensions["fifoq"]


def plans() -> ReleasePlans:
    return current_app.extensions["fifoq_releases"]


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    # A live page re-reads itself in the background (admin/static/live.js): such a request must
    # not consume the flashed messages meant for the operator's next page.
    return {"live_fetch": request.headers.get("X-Fifoq-Live") == "1"}


@bp.route("/failures")
@require_role(Role.VIEWER)
def failures() -> Any:
    board = build_board(backend())
    return render_template("failures.html", board=board, releases=[plans().with_statuses(p) for p in plans().recent(limit=10)])


def _group_page(fp: str, *, patch_text: str = PATCH_EXAMPLE, patch_error: str | None = None, status: int = 200) -> Any:
    try:
        group: Group | None = group_of(backend(), fp)
    except NotFound:
        group = None
    releases = [plans().with_statuses(p) for p in plans().recent(fingerprint=fp)]
    if group is None and not releases:
        status = 404  # the page still says so, and a live page that watched the group repaired shows it
    return render_template("failure_group.html", fp=fp, group=group, releases=releases, patch_text=patch_text,
                           patch_error=patch_error), status


@bp.route("/failures/<fp>")
@require_role(Role.VIEWER)
def group(fp: str) -> Any:
    return _group_page(fp)


def _named_ids() -> list[str] | None:
    ids = request.form.getlist("message_id")
    return ids or None


def _flash_result(result: Any, verb: str) -> None:
    counts = result.to_dict()["counts"]
    done = counts.get(verb, 0)
    refused = [i for i in result.items if i.outcome == "refused"]
    flash(f"{done} message(s) {verb}" + (f", {len(refused)} refused." if refused else "."), "info")
    for item in refused:
        flash(f"{item.actor or ''} {item.message_id}: {item.reason}", "error")


@bp.route("/failures/<fp>/replay", methods=["POST"])
@require_role(Role.OPERATOR)
def replay(fp: str) -> Any:
    result = replay_all(backend(), group_of(backend(), fp), acting_user(), _named_ids())
    _flash_result(result, "replayed")
    return redirect(url_for("repair.group", fp=fp))


@bp.route("/failures/<fp>/cancel", methods=["POST"])
@require_role(Role.OPERATOR)
def cancel(fp: str) -> Any:
    if request.form.get("confirm") != "yes":
        flash("Tick the confirmation box to cancel the group: its messages will never be processed.", "error")
        return redirect(url_for("repair.group", fp=fp))
    try:
        result = cancel_all(backend(), group_of(backend(), fp), acting_user(), request.form.get("reason", ""), _named_ids())
    except ValidationError as exc:
        flash(str(exc), "error")
        return redirect(url_for("repair.group", fp=fp))
    _flash_result(result, "cancelled")
    return redirect(url_for("repair.group", fp=fp))


@bp.route("/failures/<fp>/patch", methods=["POST"])
@require_role(Role.OPERATOR)
def patch(fp: str) -> Any:
    """Step 1 (no `confirm`): the per-message preview. Step 2 (`confirm=1`): apply at the previewed versions."""
    text = request.form.get("patch", "")
    try:
        parsed = parse_patch(text)
    except ValidationError as exc:
        return _group_page(fp, patch_text=text, patch_error=str(exc), status=400)
    if request.form.get("confirm") != "1":
        grp = group_of(backend(), fp)
        result = preview_patch(backend(), grp, parsed, _named_ids())
        # Every previewed message goes to the apply, the refused ones too: each gets its outcome
        # and its audit entry there (refused again, with its reason, unless fixed meanwhile).
        versions = {i.message_id: i.version for i in result.items if i.version is not None}
        return render_template("patch_preview.html", fp=fp, group=grp, result=result,
                               patch_text=text, versions_json=json.dumps(versions))
    try:
        versions = json.loads(request.form.get("versions", ""))
    except ValueError:
        return _group_page(fp, patch_text=text, patch_error="the previewed versions are missing: preview again", status=400)
    try:
        result = apply_group_patch(backend(), fp, parsed, versions, acting_user())
    except ValidationError as exc:
        return _group_page(fp, patch_text=text, patch_error=str(exc), status=400)
    return render_template("patch_result.html", fp=fp, result=result, patch_text=text)


@bp.route("/failures/<fp>/release", methods=["POST"])
@require_role(Role.OPERATOR)
def release(fp: str) -> Any:
    try:
        plan = plans().start(group_of(backend(), fp), acting_user(), request.form.get("canary") or None)
    except (ValidationError, Conflict) as exc:
        flash(str(exc), "error")
        return redirect(url_for("repair.group", fp=fp))
    return redirect(url_for("repair.release_page", plan_id=plan["_id"]))


@bp.route("/releases/<plan_id>")
@require_role(Role.VIEWER)
def release_page(plan_id: str) -> Any:
    return render_template("release.html", plan=plans().with_statuses(plans().get(plan_id)))


@bp.route("/releases/<plan_id>/abort", methods=["POST"])
@require_role(Role.OPERATOR)
def abort(plan_id: str) -> Any:
    try:
        plans().abort(plan_id, acting_user())
        flash("Release aborted: nothing more is released.", "info")
    except Conflict as exc:
        flash(str(exc), "error")
    return redirect(url_for("repair.release_page", plan_id=plan_id))
