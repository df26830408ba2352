"""An actor's message list: newest first by default, a sort option, and finished-at and duration
columns, on the page and in the JSON API."""
from __future__ import annotations

import re

from flask.testing import FlaskClient

from admin import timefmt
from tests.helpers import Blocked


def table(client: FlaskClient, query: str = "") -> str:
    resp = client.get(f"/actors/payment{query}")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    return page[page.index('id="messages"'):page.index("</table>", page.index('id="messages"'))]


def listed_ids(html: str) -> list[str]:
    return re.findall(r'href="/messages/([^"/]+)"', html)


def test_admin_lists_actor_page_is_newest_first_with_an_oldest_first_option(viewer: FlaskClient, blocked: Blocked) -> None:
    oldest_first = [blocked.done_id, blocked.failed_id, *blocked.waiting_ids]
    assert listed_ids(table(viewer)) == oldest_first[::-1]
    assert listed_ids(table(viewer, "?sort=newest")) == oldest_first[::-1]
    assert listed_ids(table(viewer, "?sort=oldest")) == oldest_first
    # the order is kept across pages
    second = table(viewer, "?sort=oldest&per_page=2&page=2")
    assert listed_ids(second) == oldest_first[2:4]
    page = viewer.get("/actors/payment?sort=oldest&per_page=2&page=2").get_data(as_text=True)
    links = re.findall(r'href="(/actors/payment\?[^"]*page=3[^"]*)"', page)
    assert links and "sort=oldest" in links[0]
    page = viewer.get("/actors/payment?sort=oldest").get_data(as_text=True)
    assert '<option value="oldest" selected>' in page


def test_admin_lists_bad_sort_is_refused_clearly(viewer: FlaskClient, blocked: Blocked) -> None:
    resp = viewer.get("/actors/payment?sort=size", follow_redirects=True)
    assert resp.status_code == 200 and "sort must be one of newest, oldest" in resp.get_data(as_text=True)
    resp = viewer.get("/api/actors/payment/messages?sort=size")
    assert resp.status_code == 400 and "sort must be one of" in resp.get_json()["error"]


def test_admin_lists_actor_page_shows_finished_at_and_duration(viewer: FlaskClient, blocked: Blocked) -> None:
    rows = {m: row for row in table(viewer).split("<tr>")[1:] for m in listed_ids(row)}
    done = rows[blocked.done_id]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", done, re.S)
    finished, duration = cells[4], cells[5]
    assert '<time class="when"' in finished
    assert re.fullmatch(r"\d+ s|\d+ min( \d+ s)?", duration.strip()), duration
    waiting = re.findall(r"<td[^>]*>(.*?)</td>", rows[blocked.waiting_ids[0]], re.S)
    assert waiting[4].strip() == "—" and waiting[5].strip() == "—"
    failed = re.findall(r"<td[^>]*>(.*?)</td>", rows[blocked.failed_id], re.S)
    assert '<time class="when"' in failed[4]  # a failed attempt ended too: when, and how long it ran


def test_admin_lists_api_newest_first_with_run_time_and_latency(viewer: FlaskClient, blocked: Blocked) -> None:
    data = viewer.get("/api/actors/payment/messages").get_json()
    assert data["sort"] == "newest"
    assert [m["seq"] for m in data["items"]] == [5, 4, 3, 2, 1]
    done = next(m for m in data["items"] if m["id"] == blocked.done_id)
    assert done["run_seconds"] is not None and 0 <= done["run_seconds"] <= done["latency_seconds"]
    assert done["finished_at"].endswith("Z")
    queued = next(m for m in data["items"] if m["id"] == blocked.waiting_ids[0])
    assert queued["run_seconds"] is None and queued["latency_seconds"] is None
    oldest = viewer.get("/api/actors/payment/messages?sort=oldest").get_json()
    assert oldest["sort"] == "oldest" and [m["seq"] for m in oldest["items"]] == [1, 2, 3, 4, 5]
    # run_seconds is what the page's Duration column shows
    assert timefmt.duration(done["run_seconds"]) in table(viewer)
