"""How the console writes a time: always UTC, in one format, with its age.

- Pages: `{{ value | when }}` renders `2024-05-01 12:34:56 UTC · 3 min ago` as a `<time>` element
  whose `datetime` attribute carries the ISO value; admin/static/time.js (window.fifoqTime, the
  same rules in JavaScript) keeps the age current and formats what scripts draw (the charts'
  axes and legends). `{{ value | ago }}` is the age alone, `{{ seconds | duration }}` a span of
  time ("5 min 3 s"), `{{ value | utc }}` the plain text for attributes.
- JSON (the API, the webhooks, the audit details shown on pages): ISO 8601 in UTC with a `Z` and
  milliseconds, `2024-05-01T12:34:56.789Z`, through `iso()` / `json_default()`; the app's JSON
  provider uses it, so no datetime reaches a client in another form.

The ledger keeps datetimes in UTC (naive ones from mongomock are UTC too: backend.ledger.as_aware).
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup

from backend.ledger import as_aware, utcnow
from backend.values import Status

TEXT_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
_ENDED = (Status.DONE.value, Status.FAILED.value)
NOTHING = "—"


def _utc(value: datetime) -> datetime:
    aware = as_aware(value)
    assert aware is not None
    return aware.astimezone(timezone.utc)


def iso(value: datetime | None) -> str | None:
    """ISO 8601, UTC, `Z`, milliseconds: what the JSON API and the webhooks carry."""
    if value is None:
        return None
    return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text(value: datetime | None) -> str:
    """`2024-05-01 12:34:56 UTC`, what pages show."""
    return NOTHING if value is None else _utc(value).strftime(TEXT_FORMAT)


def duration(seconds: float | None) -> str:
    """A span of time in at most two units: `42 s`, `5 min 3 s`, `2 h 5 min`, `3 d 4 h`."""
    if seconds is None:
        return NOTHING
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        big, small = divmod(s, 60)
        return f"{big} min" + (f" {small} s" if small else "")
    if s < 86400:
        big, small = divmod(s, 3600)
        return f"{big} h" + (f" {small // 60} min" if small >= 60 else "")
    big, small = divmod(s, 86400)
    return f"{big} d" + (f" {small // 3600} h" if small >= 3600 else "")


def elapsed(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from start to end; None when either is missing or end comes first."""
    if start is None or end is None:
        return None
    seconds = (_utc(end) - _utc(start)).total_seconds()
    return seconds if seconds >= 0 else None


def run_time(message: dict[str, Any]) -> float | None:
    """How long the handler ran on the last attempt of a message that ended it (done or failed):
    finished_at - started_at. None otherwise (while it runs, finished_at is an earlier attempt's)."""
    if message.get("status") not in _ENDED:
        return None
    return elapsed(message.get("started_at"), message.get("finished_at"))


def latency(message: dict[str, Any]) -> float | None:
    """From creation to the end of the last attempt, for a message that ended it (done or failed)."""
    if message.get("status") not in _ENDED:
        return None
    return elapsed(message.get("created_at"), message.get("finished_at"))


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """`3 min ago`, `in 2 min`, `just now` (under a second)."""
    if value is None:
        return NOTHING
    delta = ((now or utcnow()) - _utc(value)).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def html(value: datetime | None, now: datetime | None = None) -> Markup:
    """The `when` filter: the UTC time and its age, in a `<time>` that time.js keeps current."""
    if value is None:
        return Markup(NOTHING)
    return Markup('<time class="when" datetime="{iso}">{text}<span class="ago"> · {ago}</span></time>').format(
        iso=iso(value), text=text(value), ago=relative(value, now))


def json_default(value: Any) -> Any:
    """For json.dumps(default=...): datetimes as iso(); dates as YYYY-MM-DD; anything else refused."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, default=json_default, **kwargs)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON with datetimes as iso() (Flask's default writes them as HTTP dates)."""

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, (datetime, date)):
            return json_default(o)
        return DefaultJSONProvider.default(o)


def init_app(app: Flask) -> None:
    """The JSON provider and the template filters `when`, `ago`, `duration`, `utc`."""
    provider = JSONProvider(app)
    provider.sort_keys = getattr(app.json, "sort_keys", DefaultJSONProvider.sort_keys)
    app.json = provider
    app.add_template_filter(html, "when")
    app.add_template_filter(relative, "ago")
    app.add_template_filter(duration, "duration")
    app.add_template_filter(text, "utc")
    app.add_template_global(lambda: iso(utcnow()), "server_now")
    app.add_template_global(elapsed, "elapsed")
    app.add_template_global(run_time, "run_time")
    app.add_template_global(latency, "latency")

