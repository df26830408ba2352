"""One time format and zone everywhere: UTC with its age on pages, ISO 8601 with `Z` in the JSON
API (admin.timefmt), and the /audit page that a datetime in an entry's details used to break."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from flask.testing import FlaskClient

from admin import timefmt
from backend.app import Backend
from tests.helpers import Blocked

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
AT = datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=timezone.utc)


def text(resp) -> str:
    return resp.get_data(as_text=True)


@pytest.mark.parametrize("seconds,shown", [
    (0, "0 s"), (42.9, "42 s"), (60, "1 min"), (303, "5 min 3 s"), (3600, "1 h"), (7500, "2 h 5 min"),
    (86400, "1 d"), (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"), (-5, "0 s"),
])
def test_timefmt_duration_in_at_most_two_units(seconds: float, shown: str) -> None:
    assert timefmt.duration(seconds) == shown


def test_timefmt_formats_utc_iso_relative_and_naive_values_as_utc() -> None:
    assert timefmt.iso(AT) == "2024-05-01T12:34:56.789Z"
    assert timefmt.iso(AT.replace(tzinfo=None)) == "2024-05-01T12:34:56.789Z"  # mongomock's naive UTC
    paris = AT.astimezone(timezone(timedelta(hours=2)))
    assert timefmt.iso(paris) == "2024-05-01T12:34:56.789Z" and timefmt.text(paris) == "2024-05-01 12:34:56 UTC"
    assert timefmt.relative(AT, AT + timedelta(minutes=3, seconds=2)) == "3 min 2 s ago"
    assert timefmt.relative(AT, AT + timedelta(milliseconds=300)) == "just now"
    assert timefmt.relative(AT + timedelta(hours=2), AT) == "in 2 h"
    assert timefmt.text(None) == timefmt.relative(None) == "—" and timefmt.iso(None) is None
    html = str(timefmt.html(AT, AT + timedelta(minutes=3)))
    assert html == ('<time class="when" datetime="2024-05-01T12:34:56.789Z">2024-05-01 12:34:56 UTC'
                    '<span class="ago"> · 3 min ago</span></time>')


def test_timefmt_run_time_only_for_an_attempt_that_ended() -> None:
    doc = {"status": "done", "created_at": AT, "started_at": AT + timedelta(seconds=2),
           "finished_at": AT + timedelta(seconds=2, milliseconds=500)}
    assert timefmt.run_time(doc) == 0.5 and timefmt.latency(doc) == 2.5
    # a replay in progress: finished_at is the previous attempt's
    running = dict(doc, status="processing", started_at=AT + timedelta(seconds=9))
    assert timefmt.run_time(running) is None and timefmt.latency(running) is None


def test_admin_api_every_datetime_is_iso_utc_with_z(viewer: FlaskClient, blocked: Blocked) -> None:
    doc = viewer.get(f"/api/messages/{blocked.failed_id}").get_json()
    assert ISO_Z.match(doc["created_at"]) and ISO_Z.match(doc["finished_at"])
    assert all(ISO_Z.match(a["started_at"]) for a in doc["attempt_log"])
    actor = viewer.get("/api/actors/payment").get_json()
    assert ISO_Z.match(actor["blocked"]["since"]) and ISO_Z.match(actor["oldest_open_at"])
    assert ISO_Z.match(viewer.get("/api/overview").get_json()["generated_at"])
    assert ISO_Z.match(viewer.get("/api/alerts").get_json()["generated_at"])
    assert all(ISO_Z.match(m) for m in viewer.get("/api/charts?minutes=2").get_json()["minutes"])


def test_admin_pages_show_times_in_utc_with_their_age(viewer: FlaskClient, blocked: Blocked) -> None:
    page = text(viewer.get(f"/messages/{blocked.failed_id}"))
    created = re.search(r'<time class="when" datetime="([^"]+)">(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC'
                        r'<span class="ago"> · ([^<]+)</span></time>', page)
    assert created, "times are rendered by the `when` filter"
    iso, shown, ago = created.groups()
    assert ISO_Z.match(iso) and iso.startswith(shown.replace(" ", "T")) and (ago.endswith("ago") or ago == "just now")
    assert '<meta name="fifoq-server-now" content="' in page and "time.js" in page
    # no other format slips through: every date on the page is in a <time>
    bare = re.sub(r"<time .*?</time>", "", page, flags=re.S)
    assert not re.search(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d", re.sub(r'content="[^"]*"', "", bare))


def test_admin_audit_page_after_a_resume_is_not_a_500(operator: FlaskClient, viewer: FlaskClient, backend: Backend,
                                                      blocked: Blocked) -> None:
    """Regression: a resume records the pause it ended, whose `at` is a datetime; the audit page
    rendered the details through json.dumps and answered 500 to everyone from then on."""
    assert operator.post("/actors/shipping/pause", data={"reason": "provider maintenance"}).status_code == 302
    assert operator.post("/actors/shipping/resume").status_code == 302
    entry = backend.audit.find(action="resume")[0][0]
    paused_at = entry["details"]["was_paused"]["at"]
    assert isinstance(paused_at, datetime)  # what the ledger keeps, untouched
    for client in (viewer, operator):
        resp = client.get("/audit")
        assert resp.status_code == 200, text(resp)[:500]
        assert timefmt.iso(paused_at) in text(resp) and "provider maintenance" in text(resp)
    assert viewer.get("/audit?action=resume").status_code == 200
    api = viewer.get("/api/audit?action=resume").get_json()
    assert api["items"][0]["details"]["was_paused"]["at"] == timefmt.iso(paused_at)
