"""Trace by correlation id: every message of one business event across actors, in one timeline.

`emit_event(..., correlation_id=...)` gives each subscriber's message the event's correlation id;
Ledger.trace reads them back across actors, oldest first. The page draws each message as a bar
from its creation to the end of its last attempt (or to now while it is open), on one time axis,
as server-side SVG (no inline style or script: the CSP forbids them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from admin.auth import require_role
from admin.params import text_filter
from admin.users import Role
from backend.app import Backend
from backend.errors import UnknownMessage, ValidationError
from backend.ledger import as_aware, utcnow
from backend.values import FINAL_STATUSES

TRACE_LIMIT = 500

bp = Blueprint("trace", __name__)


@dataclass
class Trace:
    correlation_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    truncated: bool = False

    @property
    def actors(self) -> list[str]:
        return sorted({m["actor"] for m in self.messages})

    def to_dict(self) -> dict[str, Any]:
        return {"correlation_id": self.correlation_id, "count": len(self.messages), "actors": self.actors,
                "start": self.start, "end": self.end,
                "span_seconds": (self.end - self.start).total_seconds() if self.start and self.end else None,
                "truncated": self.truncated, "messages": self.messages}


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else max(0.0, (b - a).total_seconds())


def build_trace(backend: Backend, correlation_id: str) -> Trace:
    now = utcnow()
    docs = backend.ledger.trace(correlation_id, limit=TRACE_LIMIT)
    trace = Trace(correlation_id, truncated=len(docs) >= TRACE_LIMIT)
    for d in docs:
        created = as_aware(d.get("created_at"))
        finished = as_aware(d.get("finished_at")) if d["status"] in FINAL_STATUSES or d["status"] == "failed" else None
        ends = finished or now
        trace.messages.append({
            "id": d["_id"], "actor": d["actor"], "seq": d["seq"], "key": d.get("key"), "event": d.get("event"),
            "status": d["status"], "attempts": d.get("attempts", 0), "version": d.get("version", 1),
            "created_at": created, "published_at": as_aware(d.get("published_at")),
            "started_at": as_aware(d.get("started_at")), "finished_at": finished,
            "duration_seconds": _seconds(created, finished),
            "last_error": d.get("last_error"), "open": finished is None,
            "_ends": ends,
        })
    if trace.messages:
        trace.start = min(m["created_at"] for m in trace.messages if m["created_at"])
        trace.end = max(m["_ends"] for m in trace.messages)
    span = _seconds(trace.start, trace.end) or 0.0
    for m in trace.messages:
        ends = m.pop("_ends")
        # Bar geometry for the SVG, in per cent of the axis; at least a sliver so an instant shows.
        x = 100.0 * (_seconds(trace.start, m["created_at"]) or 0.0) / span if span else 0.0
        w = 100.0 * (_seconds(m["created_at"], ends) or 0.0) / span if span else 100.0
        m["bar"] = {"x": round(min(x, 99.5), 2), "width": round(max(0.5, min(w, 100.0 - x)), 2)}
    return trace


def _correlation_id(raw: Any) -> str | None:
    value = text_filter({"q": raw}, "q")
    if value is not None and not value.isprintable():
        raise ValidationError("the correlation id must be printable text")
    return value


@bp.route("/trace")
@require_role(Role.VIEWER)
def page() -> Any:
    """/trace?correlation_id=B-0004 (the search box of every page). A message id is accepted too:
    it leads to the trace of that message's correlation id."""
    backend: Backend = current_app.extensions["fifoq"]
    cid = _correlation_id(request.args.get("correlation_id"))
    trace = build_trace(backend, cid) if cid else None
    if trace is not None and cid and not trace.messages:
        try:
            doc = backend.ledger.message(cid)
        except UnknownMessage:
            doc = None
        if doc is not None and doc.get("correlation_id"):
            return redirect(url_for("trace.page", correlation_id=doc["correlation_id"]))
    status = 404 if trace is not None and not trace.messages else 200
    return render_template("trace.html", cid=cid or "", trace=trace), status


@bp.route("/api/trace/<path:correlation_id>")
@require_role(Role.VIEWER)
def api(correlation_id: str) -> Any:
    """GET /api/trace/B-0004 -> {correlation_id, count, actors, start, end, span_seconds, messages: [...]}
    (404 when no message carries that correlation id)."""
    from admin.api import ok

    backend: Backend = current_app.extensions["fifoq"]
    cid = _correlation_id(correlation_id)
    if cid is None:
        raise ValidationError("a correlation id is required")
    trace = build_trace(backend, cid)
    if not trace.messages:
        return ok({"error": f"no message has the correlation id {cid!r}", "details": []}, 404)
    return ok(trace.to_dict())
