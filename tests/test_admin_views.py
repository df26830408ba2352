"""HTML pages of the admin console, driven through Flask's test client over a real broker."""
from __future__ import annotations

import re
from html.parser import HTMLParser

from flask import Flask
from flask.testing import FlaskClient

from admin.users import UserStore
from backend.app import Backend
from backend.errors import StoreError
from tests.helpers import XSS, Blocked, login


def text(resp) -> str:
    return resp.get_data(as_text=True)


def test_admin_views_overview_shows_blocked_actor_with_error_and_waiting(viewer: FlaskClient, blocked: Blocked) -> None:
    resp = viewer.get("/")
    assert resp.status_code == 200
    page = text(resp)
    row = re.search(r'<tr class="row-blocked">(.*?)</tr>', page, re.S)
    assert row, page
    assert "payment" in row.group(1)
    assert "ValueError" in row.group(1)
    # 3 messages wait behind the failed head
    assert "<td>3</td>" in row.group(1)
    assert "shipping" in page
    assert 'id="broker-health"' in page and "no alarms" in page


def test_admin_views_overview_filters_blocked_only_and_by_name(viewer: FlaskClient, blocked: Blocked) -> None:
    page = text(viewer.get("/?blocked=1"))
    assert "/actors/payment" in page and "/actors/shipping" not in page
    page = text(viewer.get("/?name=ship"))
    assert "/actors/shipping" in page and "/actors/payment" not in page
    page = text(viewer.get("/?name=nothing-like-this"))
    assert 'id="no-actors"' in page


def test_admin_views_overview_says_broker_api_unreachable(broker_down_app: Flask, blocked: Blocked) -> None:
    client = broker_down_app.test_client()
    login(client, "vera")
    resp = client.get("/")
    page = text(resp)
    assert resp.status_code == 200
    assert 'id="broker-error"' in page and "unreachable" in page
    assert "127.0.0.1:9" in page
    # the ledger part is still shown, the broker columns say unknown rather than 0
    assert "/actors/payment" in page
    assert "unknown (broker API unreachable)" in page


def test_admin_views_overview_says_ledger_unreachable(viewer: FlaskClient, backend: Backend, blocked: Blocked, monkeypatch) -> None:
    """Given the ledger's collections fail (the user's session still resolves), the overview says
    the ledger is unreachable and still lists the actor queues the broker knows."""

    def down(*args, **kwargs):
        raise StoreError("ledger unavailable: connection refused")

    monkeypatch.setattr(backend.ledger, "board", down)
    resp = viewer.get("/")
    page = text(resp)
    assert resp.status_code == 503
    assert 'id="ledger-error"' in page and "connection refused" in page
    assert "payment" in page and "unknown" in page


def test_admin_views_whole_store_down_gives_ledger_unreachable_page(viewer: FlaskClient, backend: Backend, monkeypatch) -> None:
    def down():
        raise StoreError("ledger unavailable: server selection timeout")

    monkeypatch.setattr(backend.store, "op", down)
    for path in ("/", "/actors/payment", "/audit"):
        resp = viewer.get(path)
        assert resp.status_code == 503
        assert "Ledger unreachable" in text(resp) and "server selection timeout" in text(resp)


# -- actor page ------------------------------------------------------------------------------------
def test_admin_views_actor_page_shows_blocked_head_error_and_traceback(viewer: FlaskClient, blocked: Blocked) -> None:
    page = text(viewer.get("/actors/payment"))
    assert 'id="blocked"' in page
    assert blocked.failed_id in page
    assert "ValueError" in page and "Traceback (most recent call last)" in page
    assert "3 message(s) wait behind it" in page
    assert 'id="consistency"' in page


def listed(client: FlaskClient, query: str) -> str:
    """The messages table of the payment actor page."""
    page = text(client.get(f"/actors/payment{query}"))
    return page[page.index('id="messages"'):]


def test_admin_views_actor_page_lists_filters_and_paginates_messages(viewer: FlaskClient, blocked: Blocked) -> None:
    table = listed(viewer, "")
    assert all(f"/messages/{i}" in table for i in [blocked.done_id, blocked.failed_id, *blocked.waiting_ids])
    table = listed(viewer, "?status=failed")
    assert f"/messages/{blocked.failed_id}" in table and f"/messages/{blocked.done_id}" not in table
    table = listed(viewer, "?q=a@example.com&status=done")
    assert f"/messages/{blocked.done_id}" in table and f"/messages/{blocked.failed_id}" not in table
    table = listed(viewer, "?q=pwned")
    assert f"/messages/{blocked.failed_id}" in table and f"/messages/{blocked.done_id}" not in table
    assert "No message matches." in listed(viewer, "?event=other.event")
    assert "No message matches." in listed(viewer, "?since=2000-01-01&until=2000-01-02")
    assert f"/messages/{blocked.done_id}" in listed(viewer, "?since=2000-01-01")
    table = listed(viewer, "?per_page=2&page=2")
    assert "page 2 of 3" in table and "previous" in table and "next" in table
    assert f"/messages/{blocked.waiting_ids[0]}" in table and f"/messages/{blocked.done_id}" not in table


def test_admin_views_actor_page_bad_filter_is_a_message_not_a_crash(viewer: FlaskClient, blocked: Blocked) -> None:
    resp = viewer.get("/actors/payment?since=yesterday", follow_redirects=True)
    assert resp.status_code == 200
    assert "since must be a date" in text(resp)
    resp = viewer.get("/actors/payment?status=weird", follow_redirects=True)
    assert "status must be one of" in text(resp)


def test_admin_views_unknown_actor_and_message_are_404(viewer: FlaskClient, blocked: Blocked) -> None:
    assert viewer.get("/actors/nobody").status_code == 404
    assert viewer.get("/messages/nope").status_code == 404


def test_admin_views_pause_and_resume_with_reason(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = operator.post("/actors/shipping/pause", data={"reason": "carrier API <maintenance>"}, follow_redirects=True)
    assert resp.status_code == 200
    assert backend.ledger.actor("shipping")["paused"]["reason"] == "carrier API <maintenance>"
    assert "carrier API &lt;maintenance&gt;" in text(resp)
    assert "Resume" in text(resp)
    resp = operator.post("/actors/shipping/resume", follow_redirects=True)
    assert backend.ledger.actor("shipping")["paused"] is None
    rows, _ = backend.audit.find(actor="shipping")
    assert [r["action"] for r in rows] == ["resume", "pause"] and rows[0]["user"] == "otto"


def test_admin_views_pause_without_reason_is_refused(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = operator.post("/actors/shipping/pause", data={"reason": "  "}, follow_redirects=True)
    assert "a reason is required" in text(resp)
    assert backend.ledger.actor("shipping")["paused"] is None


# -- message page ----------------------------------------------------------------------------------
def test_admin_views_message_page_shows_payload_escaped_and_attempts(viewer: FlaskClient, blocked: Blocked) -> None:
    page = text(viewer.get(f"/messages/{blocked.failed_id}"))
    assert XSS not in page
    assert "&lt;script&gt;alert(" in page
    assert "<b>bold</b>" not in page
    assert 'id="attempts"' in page and "attempt 1" in page and "failed" in page
    # a viewer sees no editor and no action buttons
    assert 'id="editor"' not in page and "Replay" not in page


class _Elements(HTMLParser):
    """Every element of a page with its text content (nested text included), as a browser reads it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, dict, list[str]]] = []
        self.elements: list[tuple[str, dict, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("br", "input", "img", "meta", "link", "hr"):
            self.elements.append((tag, dict(attrs), ""))
        else:
            self.open.append((tag, dict(attrs), []))

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            name, attrs, parts = self.open.pop()
            self.elements.append((name, attrs, "".join(parts)))
            if self.open:
                self.open[-1][2].extend(parts)
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][2].append(data)


def elements(html: str) -> list[tuple[str, dict, str]]:
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.elements


def test_admin_views_actor_and_overview_escape_payload_and_error(viewer: FlaskClient, blocked: Blocked) -> None:
    """The hostile note (a <script> and a <b>) is on the pages as text, in the blocked actor's
    error (overview and actor page) and in the head message's payload (actor page); it became no
    element of the page."""
    for path in ("/", "/actors/payment", "/actors/payment?q=pwned"):
        page = elements(text(viewer.get(path)))
        shown = [t for _tag, _attrs, t in page]
        # in the error: "ValueError: cannot handle {... 'note': "<script>alert('pwned')</script><b>bold</b>"}"
        assert any("ValueError" in t and "cannot handle" in t and XSS in t and len(t) < 2000 for t in shown), path
        if path != "/":
            # in the head message's payload, pretty-printed JSON
            assert any(f'"note": "{XSS}"' in t for t in shown), path
        # and as no element: every script of the page is a file of the console, no <b> says "bold"
        assert all(attrs.get("src") for tag, attrs, _t in page if tag == "script"), path
        assert not any(tag == "b" and "bold" in t for tag, _attrs, t in page), path


def test_admin_views_edit_shows_diff_then_saves_a_new_version(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    new = '{"amount": 15, "customer": {"email": "a@example.com"}, "note": "fixed"}'
    resp = operator.post(f"/messages/{blocked.failed_id}/edit", data={"payload": new})
    page = text(resp)
    assert resp.status_code == 200 and 'id="diff"' in page
    assert '-  &#34;amount&#34;: -1,' in page and '+  &#34;amount&#34;: 15,' in page
    assert backend.ledger.message(blocked.failed_id)["version"] == 1  # nothing saved yet
    resp = operator.post(
        f"/messages/{blocked.failed_id}/edit",
        data={"payload": new, "confirm": "1", "expected_version": "1"},
        follow_redirects=True,
    )
    assert "Saved as version 2" in text(resp)
    doc = backend.ledger.message(blocked.failed_id)
    assert doc["payload"]["amount"] == 15 and doc["version"] == 2
    assert doc["history"][0]["by"] == "otto"
    assert 'id="history"' in text(resp) and "otto" in text(resp)


def test_admin_views_schema_invalid_edit_is_refused_with_paths_and_ledger_unchanged(
    operator: FlaskClient, backend: Backend, blocked: Blocked
) -> None:
    before = backend.ledger.message(blocked.failed_id)
    bad = '{"amount": "ten", "customer": {}}'
    for data in ({"payload": bad}, {"payload": bad, "confirm": "1", "expected_version": "1"}):
        resp = operator.post(f"/messages/{blocked.failed_id}/edit", data=data)
        page = text(resp)
        assert resp.status_code == 422
        assert 'id="edit-errors"' in page
        assert "$.amount" in page and "$.customer" in page and "email" in page
    assert backend.ledger.message(blocked.failed_id) == before


def test_admin_views_actor_page_date_filters_at_the_ends_of_the_calendar(viewer: FlaskClient, blocked: Blocked) -> None:
    for query in ("until=9999-12-31", "since=0001-01-01T00:00:00%2B05:00"):
        resp = viewer.get(f"/actors/payment?{query}", follow_redirects=True)
        assert resp.status_code == 200, query
        assert "within the years 1 to 9999" in text(resp), query
    assert viewer.get("/actors/payment?until=9999-12-30&since=0001-01-01").status_code == 200


def test_admin_views_edit_with_a_huge_integer_is_a_400(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    before = backend.ledger.message(blocked.failed_id)
    for confirm in ({}, {"confirm": "1", "expected_version": "1"}):
        resp = operator.post(f"/messages/{blocked.failed_id}/edit",
                             data={"payload": '{"amount": ' + "9" * 5000 + ', "customer": {"email": "e"}}', **confirm})
        assert resp.status_code == 400
        assert "4300 digits" in text(resp) and "set_int_max_str_digits" not in text(resp)
    assert backend.ledger.message(blocked.failed_id) == before


def test_admin_views_malformed_json_edit_is_a_400_with_the_position(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = operator.post(f"/messages/{blocked.failed_id}/edit", data={"payload": '{"amount": 1,'})
    assert resp.status_code == 400
    assert "line 1" in text(resp)
    assert backend.ledger.message(blocked.failed_id)["version"] == 1


def test_admin_views_edit_with_stale_version_is_a_conflict(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    ok = {"amount": 1, "customer": {"email": "b@example.com"}}
    backend.operations.edit(blocked.failed_id, ok, "someone-else")
    resp = operator.post(
        f"/messages/{blocked.failed_id}/edit",
        data={"payload": '{"amount": 2, "customer": {"email": "c@example.com"}}', "confirm": "1", "expected_version": "1"},
        follow_redirects=True,
    )
    assert "reload and retry" in text(resp)
    assert backend.ledger.message(blocked.failed_id)["payload"] == ok


def test_admin_views_edit_then_replay_drains_the_actor_in_order(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    good = '{"amount": 11, "customer": {"email": "a@example.com"}}'
    operator.post(f"/messages/{blocked.failed_id}/edit", data={"payload": good, "confirm": "1", "expected_version": "1"})
    resp = operator.post(f"/messages/{blocked.failed_id}/replay", follow_redirects=True)
    assert "Replay requested" in text(resp)
    assert backend.ledger.message(blocked.failed_id)["replay_requested"]["by"] == "otto"
    blocked.run(backend)
    assert backend.ledger.actor("payment")["blocked"] is None
    assert [m.payload["amount"] for m in blocked.recorder.calls] == [10, -1, 11, 20, 21, 22]
    page = text(operator.get("/"))
    assert "row-blocked" not in page


def test_admin_views_cancel_needs_confirmation_and_reason_then_unblocks(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = operator.post(f"/messages/{blocked.failed_id}/cancel", data={"reason": "duplicate"}, follow_redirects=True)
    assert "Tick the confirmation box" in text(resp)
    assert backend.ledger.message(blocked.failed_id)["status"] == "failed"
    resp = operator.post(f"/messages/{blocked.failed_id}/cancel", data={"confirm": "yes", "reason": ""}, follow_redirects=True)
    assert "a reason is required" in text(resp)
    resp = operator.post(f"/messages/{blocked.failed_id}/cancel", data={"confirm": "yes", "reason": "duplicate booking"},
                         follow_redirects=True)
    assert "tombstone" in text(resp)
    doc = backend.ledger.message(blocked.failed_id)
    assert doc["status"] == "cancelled" and doc["cancelled"]["reason"] == "duplicate booking"
    assert backend.ledger.actor("payment")["blocked"] is None
    blocked.run(backend)
    assert [m.payload["amount"] for m in blocked.recorder.calls] == [10, -1, 20, 21, 22]


def test_admin_views_replay_of_a_done_message_is_refused(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = operator.post(f"/messages/{blocked.done_id}/replay", follow_redirects=True)
    assert "only a failed message can be replayed" in text(resp)
    assert backend.ledger.message(blocked.done_id)["replay_requested"] is None


# -- audit -------------------------------------------------------------------------------------------
def test_admin_views_audit_page_lists_and_filters_actions(operator: FlaskClient, viewer: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    operator.post("/actors/shipping/pause", data={"reason": "maintenance"})
    operator.post(f"/messages/{blocked.failed_id}/replay")
    page = text(viewer.get("/audit"))
    assert "maintenance" in page and "replay" in page and "otto" in page
    page = text(viewer.get("/audit?action=pause"))
    assert "maintenance" in page and blocked.failed_id[:12] not in page
    page = text(viewer.get("/audit?actor=payment"))
    assert blocked.failed_id[:12] in page and "maintenance" not in page
    page = text(viewer.get("/audit?user=nobody"))
    assert "No entry matches." in page


def test_admin_views_confirm_step_round_trips_markup_in_the_payload_as_text(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    new = '{"amount": 5, "customer": {"email": "a@example.com"}, "note": "\\"><script>alert(2)</script>"}'
    page = text(operator.post(f"/messages/{blocked.failed_id}/edit", data={"payload": new}))
    assert "<script>alert(2)" not in page
    hidden = re.search(r'name="payload" value="([^"]*)"', page)
    assert hidden, "the confirm form carries the payload in an attribute-escaped hidden field"
    import html
    import json

    resp = operator.post(f"/messages/{blocked.failed_id}/edit",
                         data={"payload": html.unescape(hidden.group(1)), "confirm": "1", "expected_version": "1"})
    assert resp.status_code == 302
    assert backend.ledger.message(blocked.failed_id)["payload"] == json.loads(new)


def test_admin_views_unchanged_edit_saves_nothing(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    import json

    same = json.dumps(backend.ledger.message(blocked.failed_id)["payload"])
    resp = operator.post(f"/messages/{blocked.failed_id}/edit", data={"payload": same}, follow_redirects=True)
    assert "unchanged" in text(resp)
    assert backend.ledger.message(blocked.failed_id)["version"] == 1


def test_admin_views_operator_sees_editor_and_actions_on_failed_message(operator: FlaskClient, blocked: Blocked) -> None:
    page = text(operator.get(f"/messages/{blocked.failed_id}"))
    assert 'id="editor"' in page and "Replay" in page and "Cancel the message" in page
    assert "&#34;amount&#34;: -1" in page  # the editor is pre-filled with the current payload
    page = text(operator.get(f"/messages/{blocked.done_id}"))
    assert 'id="editor"' not in page and "Replay" not in page


# -- users ------------------------------------------------------------------------------------------
def test_admin_views_users_page_creates_users_changes_roles_and_tokens(admin_client: FlaskClient, users: UserStore, backend: Backend) -> None:
    page = text(admin_client.get("/users"))
    assert all(n in page for n in ("ada", "otto", "vera"))
    resp = admin_client.post("/users", data={"username": "bob", "password": "password-bob", "role": "operator"},
                             follow_redirects=True)
    assert "User bob created (operator)" in text(resp) and users.get("bob").role.value == "operator"
    resp = admin_client.post("/users", data={"username": "<img src=x>", "password": "password", "role": "viewer"},
                             follow_redirects=True)
    assert "user name:" in text(resp) and "<img src=x>" not in text(resp)
    resp = admin_client.post("/users/bob/role", data={"role": "viewer", "confirm": "yes"}, follow_redirects=True)
    assert "bob is now viewer" in text(resp) and users.get("bob").role.value == "viewer"
    resp = admin_client.post("/users/ada/role", data={"role": "viewer"}, follow_redirects=True)
    assert "cannot remove your own admin role" in text(resp) and users.get("ada").role.value == "admin"
    resp = admin_client.post("/users/bob/tokens", data={"label": "cron"})
    page = text(resp)
    token = re.search(r'id="new-token".*?<pre>(fq_[^<]+)</pre>', page, re.S).group(1)
    assert users.user_for_token(token).name == "bob"
    assert token not in text(admin_client.get("/users"))  # shown once
    token_id = token[3:].split(".")[0]
    resp = admin_client.post(f"/tokens/{token_id}/revoke", data={"confirm": "yes"}, follow_redirects=True)
    assert "revoked" in text(resp) and users.user_for_token(token) is None
    assert {r["action"] for r in backend.audit.find(user="ada")[0]} == {"login", "user.create", "user.role", "token.create", "token.revoke"}


def test_admin_views_edit_of_a_done_message_is_refused_visibly(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    before = backend.ledger.message(blocked.done_id)
    resp = operator.post(f"/messages/{blocked.done_id}/edit", data={"payload": '{"amount": 1, "customer": {"email": "e"}}'})
    assert resp.status_code == 422
    assert 'id="edit-errors"' in text(resp) and "only pending, queued, held or failed" in text(resp)
    assert backend.ledger.message(blocked.done_id) == before


def test_admin_views_auto_refresh_is_opt_in_and_bounded(viewer: FlaskClient, blocked: Blocked) -> None:
    assert 'http-equiv="refresh"' not in text(viewer.get("/"))
    assert '<meta http-equiv="refresh" content="5">' in text(viewer.get("/?refresh=5"))
    assert '<meta http-equiv="refresh" content="2">' in text(viewer.get("/actors/payment?refresh=0"))
    assert 'http-equiv="refresh"' not in text(viewer.get("/?refresh=soon"))


def test_admin_views_users_page_deactivates_and_resets_passwords(admin_client: FlaskClient, viewer: FlaskClient, users: UserStore) -> None:
    resp = admin_client.post("/users/vera/active", data={"active": "0", "confirm": "yes"}, follow_redirects=True)
    assert "vera is now deactivated" in text(resp) and "Reactivate" in text(resp)
    assert viewer.get("/").status_code == 302
    resp = admin_client.post("/users/ada/active", data={"active": "0"}, follow_redirects=True)
    assert "cannot deactivate yourself" in text(resp)
    resp = admin_client.post("/users/vera/password", data={"password": "fresh-password"}, follow_redirects=True)
    assert "Password of vera changed" in text(resp)
    admin_client.post("/users/vera/active", data={"active": "1"})
    assert users.authenticate("vera", "fresh-password") is not None
