"""The JSON API under /api/: every view and action, error shapes, and bad input never a 500."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin.users import UserStore
from backend.app import Backend
from backend.errors import StoreError
from tests.helpers import XSS, Blocked, login


def test_admin_api_overview_lists_actors_with_broker_figures(viewer: FlaskClient, blocked: Blocked) -> None:
    resp = viewer.get("/api/overview")
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["broker_error"] is None and data["ledger_error"] is None
    assert data["broker"]["nodes_running"] and data["broker"]["alarms"] == []
    payment = next(a for a in data["actors"] if a["name"] == "payment")
    assert payment["state"] == "blocked"
    assert payment["blocked"]["message_id"] == blocked.failed_id
    assert payment["blocked"]["error"]["type"] == "ValueError"
    assert payment["waiting_behind_head"] == 3
    assert payment["counts"]["done"] == 1 and payment["counts"]["failed"] == 1
    assert payment["oldest_open_age_seconds"] is not None
    assert payment["queue"]["names"] == [f"{blocked_prefix(viewer)}.actor.payment"]
    assert data["actors"][0]["name"] == "payment"  # blocked first
    assert [a["name"] for a in viewer.get("/api/overview?blocked=1").get_json()["actors"]] == ["payment"]
    assert [a["name"] for a in viewer.get("/api/overview?name=SHIP").get_json()["actors"]] == ["shipping"]


def blocked_prefix(client: FlaskClient) -> str:
    return client.application.extensions["fifoq"].settings.prefix


def test_admin_api_overview_with_broker_down_says_so(broker_down_app: Flask, blocked: Blocked) -> None:
    client = broker_down_app.test_client()
    login(client, "vera")
    data = client.get("/api/overview").get_json()
    assert "unreachable" in data["broker_error"] and data["broker"] is None
    payment = next(a for a in data["actors"] if a["name"] == "payment")
    assert payment["queue"] is None and payment["consistency"]["status"] == "unknown"
    resp = client.get("/api/broker")
    assert resp.status_code == 503 and "unreachable" in resp.get_json()["error"]
    detail = client.get("/api/actors/payment").get_json()
    assert "unreachable" in detail["broker_error"] and detail["state"] == "blocked"


def test_admin_api_ledger_down_is_503_with_the_reason(viewer: FlaskClient, backend: Backend, monkeypatch) -> None:
    def down(*a, **k):
        raise StoreError("ledger unavailable: no primary")

    monkeypatch.setattr(backend.ledger, "board", down)
    resp = viewer.get("/api/overview")
    assert resp.status_code == 503 and "no primary" in resp.get_json()["ledger_error"]
    monkeypatch.setattr(backend.store, "op", down)
    resp = viewer.get("/api/actors/payment")
    assert resp.status_code == 503 and "no primary" in resp.get_json()["error"]


def test_admin_api_actor_detail_messages_and_consistency(viewer: FlaskClient, blocked: Blocked) -> None:
    data = viewer.get("/api/actors/payment").get_json()
    assert data["blocked_head"]["id"] == blocked.failed_id
    assert "Traceback" in data["blocked"]["error"]["traceback"]
    assert data["schema"]["required"] == ["amount", "customer"]
    page = viewer.get("/api/actors/payment/messages?per_page=2&page=1").get_json()
    assert page["total"] == 5 and page["pages"] == 3 and [m["seq"] for m in page["items"]] == [5, 4]  # newest first
    page = viewer.get("/api/actors/payment/messages?status=queued&sort=oldest").get_json()
    assert [m["id"] for m in page["items"]] == blocked.waiting_ids
    page = viewer.get("/api/actors/payment/messages?q=pwned").get_json()
    assert [m["id"] for m in page["items"]] == [blocked.failed_id]
    page = viewer.get("/api/actors/payment/messages?event=tour.booked&since=2000-01-01T00:00:00Z").get_json()
    assert page["total"] == 5
    cons = viewer.get("/api/actors/payment/consistency").get_json()
    assert cons["actor"] == "payment" and cons["ledger_queued"] == 3
    assert cons["status"] in ("ok", "unknown")  # "unknown" until the broker's first stats collection


def test_admin_api_search_matches_payload_words_correlation_and_edits_in_the_database(operator: FlaskClient, backend: Backend,
                                                                                     blocked: Blocked) -> None:
    def found(q: str) -> list[str]:
        page = operator.get("/api/actors/payment/messages", query_string={"q": q}).get_json()
        item = page["items"][0] if page["items"] else {}
        assert "terms" not in item and "terms_version" not in item  # internal fields, not shown
        return [m["id"] for m in page["items"]]

    failed = backend.ledger.message(blocked.failed_id)
    assert blocked.failed_id in found("A@EXAMPLE.COM")  # nested value, any case
    assert found("customer email") == []  # keys are not searched
    assert found("pwned alert") == [blocked.failed_id]  # every word, wherever in the payload
    assert found(failed["correlation_id"]) == [blocked.failed_id]
    assert found(blocked.failed_id) == [blocked.failed_id]
    assert found(".*") == [] and found("[a-z]+") == []  # a literal, not a pattern
    # the search text follows an edit: the new payload is found, the old one no longer
    version = failed["version"]
    resp = operator.put(f"/api/messages/{blocked.failed_id}/payload",
                        json={"payload": dict(failed["payload"], note="zebra-7", amount=5), "expected_version": version})
    assert resp.status_code == 200, resp.get_json()
    assert found("zebra-7") == [blocked.failed_id] and found("pwned") == []


def test_admin_api_consistency_flags_messages_missing_from_the_broker(backend: Backend, users: UserStore, blocked: Blocked) -> None:
    """Given the broker lost the queued envelopes (here: the queue is purged), the consistency view
    reports them missing once the broker's statistics show the empty queue and the gap has
    outlasted the statistics' lag and the persistence time (short here)."""
    import requests

    from tests.conftest import API_AUTH, API_URL
    from tests.helpers import login, make_app, wait_for

    viewer = make_app(backend, ADMIN_ALERT_PERSIST_SECONDS="2", ADMIN_BROKER_STATS_LAG_SECONDS="1").test_client()
    assert login(viewer, "vera").status_code == 302
    queue = backend.settings.queue_name("payment")
    requests.delete(f"{API_URL}/api/queues/%2F/{queue}/contents", auth=API_AUTH, timeout=10).raise_for_status()
    seen: list[str] = []

    def reported_missing() -> bool:
        seen.append(viewer.get("/api/actors/payment/consistency").get_json()["status"])
        return seen[-1] == "missing"

    wait_for(reported_missing, timeout=30, interval=0.5, what="the broker's stats to show the purged queue")
    assert "settling" in seen  # seen, then confirmed by the samples that followed
    cons = viewer.get("/api/actors/payment/consistency").get_json()
    assert cons["broker_total"] == 0 and cons["ledger_queued"] == 3 and "3 missing" in cons["explanation"]
    assert cons["ok"] is False and cons["divergent_for_seconds"] >= 2
    assert "consistency-missing" in viewer.get("/actors/payment").get_data(as_text=True)
    firing = viewer.get("/api/alerts").get_json()["firing"]
    assert any(a["rule"] == "divergence" and a["actor"] == "payment" for a in firing), firing


def test_admin_api_message_document_keeps_payload_as_data(viewer: FlaskClient, blocked: Blocked) -> None:
    resp = viewer.get(f"/api/messages/{blocked.failed_id}")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    data = resp.get_json()
    assert data["payload"]["note"] == XSS
    assert data["status"] == "failed" and data["attempt_log"][0]["outcome"] == "failed"
    assert data["created_at"].endswith("Z")


def test_admin_api_pause_resume(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = operator.post("/api/actors/shipping/pause", json={"reason": "carrier down"})
    assert resp.status_code == 200 and resp.get_json()["paused"]["by"] == "otto"
    assert operator.get("/api/actors/shipping").get_json()["state"] == "paused"
    resp = operator.post("/api/actors/shipping/resume")
    assert resp.status_code == 200 and resp.get_json()["paused"] is None
    assert [r["action"] for r in operator.get("/api/audit?actor=shipping").get_json()["items"]] == ["resume", "pause"]


def test_admin_api_preview_edit_replay_then_drain(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    fixed = {"amount": 12, "customer": {"email": "a@example.com"}}
    resp = operator.post(f"/api/messages/{blocked.failed_id}/preview", json={"payload": fixed})
    prev = resp.get_json()
    assert resp.status_code == 200 and prev["valid"] and '+  "amount": 12' in prev["diff"]
    assert backend.ledger.message(blocked.failed_id)["version"] == 1
    resp = operator.put(f"/api/messages/{blocked.failed_id}/payload", json={"payload": fixed, "expected_version": 1})
    assert resp.status_code == 200 and resp.get_json()["version"] == 2
    resp = operator.put(f"/api/messages/{blocked.failed_id}/payload", json={"payload": fixed, "expected_version": 1})
    assert resp.status_code == 409
    resp = operator.post(f"/api/messages/{blocked.failed_id}/replay", json={})
    assert resp.status_code == 200 and resp.get_json()["replay_requested"]["by"] == "otto"
    blocked.run(backend)
    assert [m.payload["amount"] for m in blocked.recorder.calls] == [10, -1, 12, 20, 21, 22]
    data = operator.get("/api/actors/payment").get_json()
    assert data["state"] == "running" and data["counts"]["done"] == 5
    edits = operator.get(f"/api/audit?message_id={blocked.failed_id}&action=edit").get_json()["items"]
    assert len(edits) == 1 and "amount" in edits[0]["details"]["diff"]


def test_admin_api_schema_invalid_edit_is_422_with_paths_and_ledger_unchanged(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    before = backend.ledger.message(blocked.failed_id)
    bad = {"amount": "ten", "customer": {"email": 5}}
    resp = operator.post(f"/api/messages/{blocked.failed_id}/preview", json={"payload": bad})
    assert resp.status_code == 200 and not resp.get_json()["valid"]
    resp = operator.put(f"/api/messages/{blocked.failed_id}/payload", json={"payload": bad})
    body = resp.get_json()
    assert resp.status_code == 422
    assert {d["path"] for d in body["details"]} == {"$.amount", "$.customer.email"}
    assert all(d["actor"] == "payment" for d in body["details"])
    assert backend.ledger.message(blocked.failed_id) == before
    assert backend.audit.find(action="edit")[1] == 0


def test_admin_api_cancel_needs_confirm_and_reason(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    url = f"/api/messages/{blocked.failed_id}/cancel"
    assert operator.post(url, json={"reason": "dup"}).status_code == 400
    assert operator.post(url, json={"confirm": True}).status_code == 400
    assert operator.post(url, json={"confirm": True, "reason": 42}).status_code == 400
    resp = operator.post(url, json={"confirm": True, "reason": "dup"})
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert operator.get("/api/actors/payment").get_json()["state"] == "running"
    resp = operator.post(f"/api/messages/{blocked.done_id}/cancel", json={"confirm": True, "reason": "late"})
    assert resp.status_code == 409


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("post", "/api/actors/payment/pause", {"data": "{not json", "content_type": "application/json"}, 400),
        ("post", "/api/actors/payment/pause", {"json": ["a", "list"]}, 400),
        ("post", "/api/actors/payment/pause", {"json": {"reason": ["x"]}}, 400),
        ("post", "/api/actors/payment/pause", {"json": {"reason": "x" * 501}}, 400),
        ("post", "/api/actors/Bad Name/pause", {"json": {"reason": "x"}}, 400),
        ("post", "/api/actors/nobody/pause", {"json": {"reason": "x"}}, 404),
        ("get", "/api/actors/nobody", {}, 404),
        ("get", "/api/actors/nobody/messages", {}, 404),
        ("get", "/api/actors/payment/messages?page=zero", {}, 400),
        ("get", "/api/actors/payment/messages?per_page=100000", {}, 400),
        ("get", "/api/actors/payment/messages?until=31/12/2024", {}, 400),
        ("get", "/api/actors/payment/messages?status=lost", {}, 400),
        ("get", "/api/messages/unknown-id", {}, 404),
        ("put", "/api/messages/unknown-id/payload", {"json": {"payload": {}}}, 404),
        ("put", "/api/messages/{failed}/payload", {"json": {}}, 400),
        ("put", "/api/messages/{failed}/payload", {"json": {"payload": {"a": 1}, "expected_version": "1"}}, 400),
        ("put", "/api/messages/{failed}/payload", {"json": {"payload": {"$where": 1}}}, 400),
        ("put", "/api/messages/{failed}/payload", {"json": {"payload": {"amount": 1, "customer": {"email": "x" * 300000}}}}, 413),
        ("put", "/api/messages/{done}/payload", {"json": {"payload": {"amount": 1, "customer": {"email": "e"}}}}, 409),
        ("post", "/api/messages/unknown-id/replay", {"json": {}}, 404),
        ("post", "/api/messages/{done}/replay", {"json": {}}, 409),
        ("post", "/api/messages/{failed}/preview", {"data": "null", "content_type": "application/json"}, 400),
        ("get", "/api/nothing-here", {}, 404),
        # A name holding "/" matches no route; never a redirect (308) to another resource.
        ("post", "/api/actors/pay%2F/pause", {"json": {"reason": "x"}}, 404),
        ("post", "/api/messages/%2F%2F/replay", {"json": {}}, 404),
        ("delete", "/api/actors/payment", {}, 405),
    ],
)
def test_admin_api_bad_input_gets_a_json_error_never_a_500(operator: FlaskClient, blocked: Blocked, method, path, kwargs, status) -> None:
    path = path.format(failed=blocked.failed_id, done=blocked.done_id)
    resp = getattr(operator, method)(path, **kwargs)
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["details"], list)


@pytest.mark.parametrize("query", [{"until": "9999-12-31"}, {"since": "0001-01-01T00:00:00+05:00"},
                                   {"until": "9999-12-31T23:30:00-05:00"}])
def test_admin_api_date_filters_past_the_ends_of_the_calendar_are_400(viewer: FlaskClient, blocked: Blocked, query) -> None:
    resp = viewer.get("/api/actors/payment/messages", query_string=query)
    assert resp.status_code == 400
    assert "must be a date" in resp.get_json()["error"] and "1 to 9999" in resp.get_json()["error"]


def test_admin_api_date_filters_at_the_ends_of_the_calendar_work(viewer: FlaskClient, blocked: Blocked) -> None:
    resp = viewer.get("/api/actors/payment/messages", query_string={"since": "0001-01-01", "until": "9999-12-30"})
    assert resp.status_code == 200 and resp.get_json()["total"] == 5
    resp = viewer.get("/api/actors/payment/messages", query_string={"since": "0001-01-01T05:00:00+05:00"})
    assert resp.status_code == 200 and resp.get_json()["total"] == 5


def test_admin_api_edit_with_a_huge_integer_is_a_400(operator: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    before = backend.ledger.message(blocked.failed_id)
    resp = operator.put(f"/api/messages/{blocked.failed_id}/payload", data='{"payload": {"amount": ' + "9" * 5000 + "}}",
                        content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"]
    assert backend.ledger.message(blocked.failed_id) == before


def test_admin_api_audit_is_filterable(operator: FlaskClient, viewer: FlaskClient, blocked: Blocked) -> None:
    operator.post("/api/actors/payment/pause", json={"reason": "look"})
    operator.post(f"/api/messages/{blocked.failed_id}/replay", json={})
    rows = viewer.get("/api/audit").get_json()
    assert sorted(r["action"] for r in rows["items"]) == ["login", "login", "pause", "replay"]  # otto's and vera's logins
    assert [r["action"] for r in viewer.get("/api/audit?action=replay").get_json()["items"]] == ["replay"]
    assert viewer.get("/api/audit?user=otto").get_json()["total"] == 3
    assert [r["action"] for r in viewer.get("/api/audit?user=vera").get_json()["items"]] == ["login"]
    assert viewer.get("/api/audit?actor=shipping").get_json()["total"] == 0


def test_admin_api_users_and_tokens_admin_only(admin_client: FlaskClient, users: UserStore, backend: Backend) -> None:
    resp = admin_client.post("/api/users", json={"username": "bob", "password": "password-bob", "role": "operator"})
    assert resp.status_code == 201 and resp.get_json() == {"name": "bob", "role": "operator", "active": True}
    assert admin_client.post("/api/users", json={"username": "bob", "password": "password-bob", "role": "viewer"}).status_code == 409
    assert admin_client.post("/api/users", json={"username": "eve", "password": "pw", "role": "viewer"}).status_code == 400
    assert admin_client.post("/api/users", json={"username": "eve", "password": "password-eve", "role": "god"}).status_code == 400
    assert admin_client.post("/api/users", json={"username": 1, "password": 2, "role": 3}).status_code == 400
    resp = admin_client.put("/api/users/bob/role", json={"role": "viewer"})
    assert resp.status_code == 200 and users.get("bob").role.value == "viewer"
    assert admin_client.put("/api/users/ghost/role", json={"role": "viewer"}).status_code == 404
    assert admin_client.put("/api/users/ada/role", json={"role": "viewer"}).status_code == 400
    resp = admin_client.post("/api/users/bob/tokens", json={"label": "script"})
    token = resp.get_json()["token"]
    assert resp.status_code == 201 and token.startswith("fq_")
    listing = admin_client.get("/api/users").get_json()
    assert {u["name"] for u in listing["items"]} >= {"ada", "bob"}
    assert all("hash" not in t and "password_hash" not in str(listing) for t in listing["tokens"])
    fresh = admin_client.application.test_client()
    assert fresh.get("/api/me", headers={"Authorization": f"Bearer {token}"}).get_json()["role"] == "viewer"
    token_id = resp.get_json()["id"]
    assert admin_client.delete(f"/api/tokens/{token_id}").status_code == 200
    assert admin_client.delete(f"/api/tokens/{token_id}").status_code == 404
    actions = [r["action"] for r in backend.audit.find(user="ada")[0]]
    assert sorted(actions) == ["login", "token.create", "token.revoke", "user.create", "user.role"]


def test_admin_api_deactivated_user_loses_session_and_tokens(admin_client: FlaskClient, viewer: FlaskClient, users: UserStore,
                                                            backend: Backend) -> None:
    token, _ = users.create_token("vera")
    assert viewer.get("/api/me").status_code == 200
    resp = admin_client.put("/api/users/vera/active", json={"active": False})
    assert resp.status_code == 200 and resp.get_json()["active"] is False
    assert viewer.get("/api/me").status_code == 401
    fresh = admin_client.application.test_client()
    assert fresh.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert login(fresh, "vera").status_code == 401
    assert admin_client.put("/api/users/vera/active", json={"active": "no"}).status_code == 400
    assert admin_client.put("/api/users/ada/active", json={"active": False}).status_code == 400
    assert admin_client.put("/api/users/vera/active", json={"active": True}).status_code == 200
    assert admin_client.put("/api/users/vera/password", json={"password": "short"}).status_code == 400
    assert admin_client.put("/api/users/vera/password", json={"password": "a-new-password"}).status_code == 200
    assert login(fresh, "vera", "a-new-password").status_code == 302
    actions = [r["action"] for r in backend.audit.find(user="ada")[0]]
    assert sorted(actions) == ["login", "user.activate", "user.deactivate", "user.password"]


def test_admin_api_every_api_route_is_documented(app: Flask) -> None:
    """docs/api.md names every rule under /api/ (and /metrics) with one of its methods, so that the
    reference cannot drift from admin.api and admin.metrics. `<name>` matches any `{...}` in the doc."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api/") or r.rule == "/metrics"]
    assert len(rules) > 20
    missing = []
    for rule in rules:
        path = re.sub(r"<[^>]+>", r"\{[^}]+\}", re.escape(rule.rule))
        methods = "|".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        if not re.search(rf"`(?:{methods}) {path}(?=[`?\s])", doc):
            missing.append(f"{methods} {rule.rule}")
    assert not missing, f"not in docs/api.md: {missing}"


def test_ledger_summaries_equal_the_aggregations_they_replace_on_the_embedded_store(backend: Backend, blocked: Blocked) -> None:
    """The overview reads counts and heads in one pass on the embedded store; MongoDB runs the two
    aggregations. Both must say the same, across actors, lanes and statuses."""
    backend.subscriptions.actor("dossiers", lanes=3)
    backend.subscriptions.subscribe("dossiers", "step", ordering_key="k")
    backend.subscriptions.subscribe("audit", "step")
    backend.declare()
    backend.emit_many([("step", {"k": f"K{i % 7}", "i": i}) for i in range(40)])
    backend.operations.cancel(backend.ledger.find(actor="audit", limit=1)[0][0]["_id"], "op", "test")
    assert backend.ledger.store.embedded
    counts, heads = backend.ledger.summaries()
    assert counts == backend.ledger.status_counts()
    assert heads == backend.ledger.heads()
    assert heads["payment"]["_id"] == blocked.failed_id and {"payment", "dossiers", "audit"} <= set(counts)
