"""The bad-input suite: property-based tests (hypothesis) against the JSON API with the Flask test
client, over an actor blocked through the real pipeline, plus hand-picked cases.

Properties: no request gets a 5xx, and whenever a request is refused (4xx) the ledger (messages,
actors, audit) and the users and tokens are exactly as before. Example counts stay modest
(EXAMPLES per property) so that `make test` stays fast.
"""
from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin.users import UserStore
from backend.app import Backend
from tests.helpers import PASSWORD, XSS, Blocked, csrf_token_from

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COLLECTIONS = ("messages", "actors", "audit", "users", "api_tokens")

NASTY_TEXT = [
    "../payment", "payment/../shipping", "..", "%2F", "%2e%2e%2f", "/", "a/b", " payment", "pay ment", "payment ",
    "\x00", "\n\r", "\x1b[31m", "x" * 5000, XSS, '{"$ne": null}', "$where", "this.amount > 0", ".*", "^",
    "'; db.dropDatabase(); '", "\u202epayment", "\ud800", "payment\x00", "PAYMENT", "ünïcødé", "",
]
INJECTION_KEYS = ["$ne", "$where", "$gt", "$regex", "$set", "$expr", "__proto__", "constructor"]
KNOWN_KEYS = ["payload", "reason", "confirm", "expected_version", "role", "username", "password", "active", "label"]

texts = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=40))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(INJECTION_KEYS + KNOWN_KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)
# Bodies: JSON objects with the keys the API reads (values of any shape, operators included),
# any JSON value, or bytes that are not JSON at all.
objects = st.fixed_dictionaries({}, optional={k: json_values for k in KNOWN_KEYS}).flatmap(
    lambda d: st.dictionaries(st.sampled_from(INJECTION_KEYS), json_values, max_size=2).map(lambda extra: {**d, **extra})
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b'{"reason": ', b"\xff\xfe\xfd", b'{"reason": "\xc3\x28"}', b"[" * 50_000,
                     b'{"a":' * 20_000, b"null", b"[]", b'"text"', b"1e999999", b'{"reason": "x", "reason": {"$ne": 1}}',
                     b"\x00" * 100, b'{"payload": NaN}', b'{"payload": Infinity}']),
)
bodies = st.one_of(objects.map(lambda o: json.dumps(o).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                   raw_bodies)

# since/until: dates and date-times over the whole calendar, with offsets up to +-23:59, so that the
# ends (0001-01-01 with a positive offset, 9999-12-31 as an inclusive upper bound) come up.
EXTREME_DATES = ["9999-12-31", "0001-01-01", "0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00+23:59",
                 "9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59.999999-23:59", "9999-12-31T23:59:59Z",
                 "0001-01-01T00:00:00Z", "0000-01-01", "10000-01-01", "2024-02-30", "2024-13-01", "2024-05-01T25:00",
                 "2024-05-01T00:00:00+24:00", "2024-05-01T00:00:00+99:99", "+002024-05-01", "2024-W01-1", "20240501"]
offsets = st.one_of(st.none(), st.just(timezone.utc), st.builds(
    timezone, st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59))))
date_texts = st.one_of(
    st.sampled_from(EXTREME_DATES),
    st.dates().map(date.isoformat),
    st.datetimes(timezones=offsets).map(datetime.isoformat),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat().replace("+00:00", "Z")),
)
# JSON text with an integer Python refuses to parse (more than 4,300 digits), in a payload edit.
huge_numbers = st.integers(min_value=4_301, max_value=6_000).flatmap(
    lambda n: st.sampled_from(["", "-"]).map(lambda sign: sign + "9" * n))
huge_payload_texts = huge_numbers.flatmap(lambda digits: st.sampled_from([
    digits, f'{{"amount": {digits}, "customer": {{"email": "e"}}}}', f'{{"amount": 1, "customer": {{"email": "e"}}, "n": [{digits}]}}',
]))

OPERATOR_ACTIONS = [
    ("POST", "/api/actors/{actor}/pause"),
    ("POST", "/api/actors/{actor}/resume"),
    ("POST", "/api/messages/{mid}/preview"),
    ("PUT", "/api/messages/{mid}/payload"),
    ("POST", "/api/messages/{mid}/replay"),
    ("POST", "/api/messages/{mid}/cancel"),
]
ADMIN_ACTIONS = [
    ("POST", "/api/users"),
    ("PUT", "/api/users/{user}/role"),
    ("PUT", "/api/users/{user}/active"),
    ("PUT", "/api/users/{user}/password"),
    ("POST", "/api/users/{user}/tokens"),
    ("DELETE", "/api/tokens/{token}"),
]
READS = ["/api/overview", "/api/actors/{actor}", "/api/actors/{actor}/messages", "/api/actors/{actor}/consistency",
         "/api/messages/{mid}", "/api/audit", "/api/me", "/api/broker"]
QUERY_KEYS = ["q", "status", "event", "since", "until", "page", "per_page", "user", "actor", "action", "message_id",
              "name", "blocked", "q[$ne]", "$where", "status[$ne]"]
FORGED_HEADERS = [
    {}, {"X-Role": "admin"}, {"X-User": "ada"}, {"X-Forwarded-User": "ada"}, {"X-Remote-User": "ada"},
    {"X-Forwarded-For": "127.0.0.1"}, {"X-HTTP-Method-Override": "GET"}, {"Cookie": "fifoq_admin=forged"},
]


def snapshot(be: Backend) -> dict[str, list[dict[str, Any]]]:
    # A token's last use is written when it authenticates a request, refused or not: bookkeeping
    # of the credential, not a change made by the request.
    with be.store.op() as db:
        return {name: sorted(db[name].find({}, {"last_used_at": 0} if name == "api_tokens" else None),
                             key=lambda d: str(d["_id"])) for name in COLLECTIONS}


def token_for(users: UserStore, name: str) -> dict[str, str]:
    token, _ = users.create_token(name, "fuzz")
    return {"Authorization": f"Bearer {token}"}


def target(path: str, blocked: Blocked, pick: dict[str, str]) -> str:
    # surrogatepass: a lone surrogate goes out as the bytes a careless client would send.
    return path.format(**{k: quote(v.encode("utf-8", "surrogatepass"), safe="") for k, v in pick.items()})


def picks(blocked_ids: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({
        "actor": st.one_of(st.sampled_from(["payment", "shipping"]), texts),
        "mid": st.one_of(blocked_ids, texts),
        "user": st.one_of(st.sampled_from(["ada", "otto", "vera", "nobody"]), texts),
        "token": texts,
    })


def ids_of(blocked: Blocked) -> list[str]:
    return [blocked.failed_id, blocked.done_id, *blocked.waiting_ids]


def check(resp: Any, before: dict, be: Backend, what: str) -> None:
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.get_data(as_text=True)[:300]}"
    if resp.status_code >= 400:
        body = resp.get_json(silent=True)
        assert isinstance(body, dict) and body.get("error"), f"{what}: not a JSON error: {resp.get_data()[:200]!r}"
        assert snapshot(be) == before, f"{what}: refused with {resp.status_code} but the ledger changed"


# -- properties --------------------------------------------------------------------------------
def test_fuzz_operator_actions_never_fail_and_refusals_change_nothing(app: Flask, backend: Backend, users: UserStore,
                                                                      blocked: Blocked) -> None:
    client = app.test_client()
    auth = token_for(users, "otto")

    @FUZZ
    @given(action=st.sampled_from(OPERATOR_ACTIONS), pick=picks(st.sampled_from(ids_of(blocked))), body=bodies)
    def prop(action: tuple[str, str], pick: dict[str, str], body: bytes) -> None:
        method, path = action
        before = snapshot(backend)
        url = target(path, blocked, pick)
        resp = client.open(url, method=method, data=body, headers=auth, content_type="application/json")
        check(resp, before, backend, f"{method} {url[:120]} {body[:80]!r}")

    prop()


def test_fuzz_operator_cannot_escalate(app: Flask, backend: Backend, users: UserStore, blocked: Blocked) -> None:
    """An operator creating users, changing roles (its own included), passwords or tokens: 403."""
    client = app.test_client()
    auth = token_for(users, "otto")

    @FUZZ
    @given(action=st.sampled_from(ADMIN_ACTIONS), pick=picks(st.sampled_from(ids_of(blocked))), body=bodies,
           forged=st.sampled_from(FORGED_HEADERS))
    def prop(action: tuple[str, str], pick: dict[str, str], body: bytes, forged: dict[str, str]) -> None:
        method, path = action
        before = snapshot(backend)
        url = target(path, blocked, pick)
        resp = client.open(url, method=method, data=body, headers={**forged, **auth}, content_type="application/json")
        check(resp, before, backend, f"{method} {url[:120]}")
        assert resp.status_code in (400, 403, 404, 405), f"{method} {url[:120]}: {resp.status_code}"

    prop()
    assert users.require("otto").role.value == "operator"


def test_fuzz_viewer_and_anonymous_cannot_act(app: Flask, backend: Backend, users: UserStore, blocked: Blocked) -> None:
    client = app.test_client()
    viewer = token_for(users, "vera")

    @FUZZ
    @given(action=st.sampled_from(OPERATOR_ACTIONS + ADMIN_ACTIONS), pick=picks(st.sampled_from(ids_of(blocked))),
           body=bodies, forged=st.sampled_from(FORGED_HEADERS), as_viewer=st.booleans())
    def prop(action: tuple[str, str], pick: dict[str, str], body: bytes, forged: dict[str, str], as_viewer: bool) -> None:
        method, path = action
        before = snapshot(backend)
        headers = {**forged, **(viewer if as_viewer else {})}
        url = target(path, blocked, pick)
        resp = client.open(url, method=method, data=body, headers=headers, content_type="application/json")
        check(resp, before, backend, f"{method} {url[:120]}")
        assert resp.status_code in (400, 401, 403, 404, 405), f"{method} {url[:120]}: {resp.status_code}"

    prop()


def test_fuzz_reads_with_hostile_query_strings(app: Flask, backend: Backend, users: UserStore, blocked: Blocked) -> None:
    client = app.test_client()
    auth = token_for(users, "vera")

    @FUZZ
    @given(path=st.sampled_from(READS), pick=picks(st.sampled_from(ids_of(blocked))),
           query=st.dictionaries(st.sampled_from(QUERY_KEYS), texts, max_size=4))
    def prop(path: str, pick: dict[str, str], query: dict[str, str]) -> None:
        before = snapshot(backend)
        url = target(path, blocked, pick)
        qs = "&".join(f"{quote(k, safe='')}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in query.items())
        resp = client.get(f"{url}?{qs}", headers=auth)
        assert resp.status_code < 500, f"GET {url[:100]} {query!r}: {resp.status_code} {resp.get_data(as_text=True)[:200]}"
        assert snapshot(backend) == before

    prop()


DATE_READS = ["/api/actors/{actor}/messages", "/actors/{actor}"]


def test_fuzz_date_filters_over_the_whole_calendar(app: Flask, backend: Backend, users: UserStore, blocked: Blocked) -> None:
    client = app.test_client()  # a session: /actors/<name> is an HTML page
    assert client.post("/login", data={"username": "vera", "password": PASSWORD}).status_code == 302

    @FUZZ
    @given(path=st.sampled_from(DATE_READS), actor=st.sampled_from(["payment", "shipping"]),
           query=st.fixed_dictionaries({}, optional={"since": date_texts, "until": date_texts}))
    def prop(path: str, actor: str, query: dict[str, str]) -> None:
        before = snapshot(backend)
        resp = client.get(path.format(actor=actor), query_string=query)
        assert resp.status_code < 500, f"GET {path} {query!r}: {resp.status_code} {resp.get_data(as_text=True)[:200]}"
        if path.startswith("/api/") and resp.status_code == 400:
            assert "date" in resp.get_json()["error"]
        assert snapshot(backend) == before

    prop()


def test_fuzz_huge_integers_in_json_edits_are_refused(app: Flask, backend: Backend, users: UserStore, blocked: Blocked) -> None:
    auth = token_for(users, "otto")
    client = app.test_client()

    @FUZZ
    @given(text=huge_payload_texts, path=st.sampled_from(["/api/messages/{mid}/payload", "/api/messages/{mid}/preview"]))
    def prop(text: str, path: str) -> None:
        before = snapshot(backend)
        url = path.format(mid=blocked.failed_id)
        resp = client.put(url, data=f'{{"payload": {text}}}', content_type="application/json", headers=auth) \
            if path.endswith("payload") else client.post(url, data=f'{{"payload": {text}}}', content_type="application/json", headers=auth)
        check(resp, before, backend, f"{path} {text[:40]}")
        assert resp.status_code == 400

    prop()


def test_fuzz_html_form_edit_never_fails_and_refusals_change_nothing(app: Flask, backend: Backend, users: UserStore,
                                                                     blocked: Blocked) -> None:
    client = app.test_client()
    assert client.post("/login", data={"username": "otto", "password": PASSWORD}).status_code == 302

    @FUZZ
    @given(mid=st.one_of(st.sampled_from(ids_of(blocked)), texts),
           payload=st.one_of(huge_payload_texts, json_values.map(json.dumps), texts,
                             st.sampled_from(["[" * 50_000, '{"a":' * 20_000, "1e999999", "NaN", '{"amount": Infinity}'])),
           confirm=st.sampled_from([None, "1", "yes"]),
           expected=st.one_of(st.none(), st.integers(-5, 5).map(str), texts))
    def prop(mid: str, payload: str, confirm: str | None, expected: str | None) -> None:
        before = snapshot(backend)
        form = {"payload": payload, **({"confirm": confirm} if confirm is not None else {}),
                **({"expected_version": expected} if expected is not None else {})}
        url = target("/messages/{mid}/edit", blocked, {"mid": mid})
        # Encoded by hand, as target() does: a lone surrogate goes out as the bytes a careless client sends.
        raw = "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in form.items())
        resp = client.post(url, data=raw, content_type="application/x-www-form-urlencoded")
        assert resp.status_code < 500, f"POST {url[:80]} {payload[:60]!r}: {resp.status_code} {resp.get_data(as_text=True)[:200]}"
        if resp.status_code >= 400:
            assert snapshot(backend) == before, f"POST {url[:80]}: refused with {resp.status_code} but the ledger changed"

    prop()


def test_fuzz_session_requests_need_the_real_csrf_token(csrf_app: Flask, backend: Backend, users: UserStore,
                                                        blocked: Blocked) -> None:
    client = csrf_app.test_client()
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"username": "ada", "password": PASSWORD, "csrf_token": token}).status_code == 302

    @FUZZ
    @given(action=st.sampled_from(OPERATOR_ACTIONS + ADMIN_ACTIONS), pick=picks(st.sampled_from(ids_of(blocked))),
           forged=st.one_of(st.none(), st.text(max_size=120), st.just(token[:-2] + "xx"), st.just("")),
           where=st.sampled_from(["header", "form", "json"]))
    def prop(action: tuple[str, str], pick: dict[str, str], forged: str | None, where: str) -> None:
        method, path = action
        before = snapshot(backend)
        url = target(path, blocked, pick)
        body: dict[str, Any] = {"reason": "fuzz", "confirm": True, "payload": {"amount": 1}, "role": "admin",
                                "username": "mallory", "password": "p" * 12}
        # A header cannot carry a line break (the client library refuses it): send the rest.
        headers = {"X-CSRFToken": re.sub(r"[\r\n]", " ", forged)} if where == "header" and forged is not None else {}
        if where == "json" and forged is not None:
            body["csrf_token"] = forged
        kwargs: dict[str, Any] = {"json": body} if where != "form" else {
            "data": {**{k: str(v) for k, v in body.items()}, **({"csrf_token": forged} if forged is not None else {})}}
        resp = client.open(url, method=method, headers=headers, **kwargs)
        check(resp, before, backend, f"{method} {url[:120]} csrf={forged!r:.40}")
        assert resp.status_code in (400, 404, 405), f"{method} {url[:120]}: {resp.status_code}"

    prop()
    # The genuine token works (the refusals above were about the token). Logging in starts a new
    # session, hence a new token.
    token = client.get("/api/me").get_json()["csrf_token"]
    resp = client.post(f"/api/actors/{blocked.actor}/pause", json={"reason": "real"}, headers={"X-CSRFToken": token})
    assert resp.status_code == 200


# -- hand-picked -------------------------------------------------------------------------------
@pytest.fixture
def operator_api(app: Flask, users: UserStore) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = token_for(users, "otto")["Authorization"]
    return client


@pytest.mark.parametrize("name", ["../payment", "..", "%2F", "pay/ment", " payment", "pay ment", "pay\x00ment",
                                  "pay\nment", "x" * 5000, XSS])
def test_fuzz_actor_names_are_not_found_and_change_nothing(operator_api: FlaskClient, backend: Backend,
                                                           blocked: Blocked, name: str) -> None:
    before = snapshot(backend)
    for method, path in [("GET", "/api/actors/{}"), ("GET", "/api/actors/{}/messages"), ("POST", "/api/actors/{}/pause"),
                         ("POST", "/api/actors/{}/resume")]:
        for encoded in (quote(name, safe=""), quote(name, safe="/")):
            resp = operator_api.open(path.format(encoded), method=method, json={"reason": "r"})
            assert resp.status_code in (400, 404, 405), (method, encoded[:60], resp.status_code)
    assert snapshot(backend) == before


def test_fuzz_replaying_or_editing_a_cancelled_message_is_refused(operator_api: FlaskClient, backend: Backend,
                                                                  blocked: Blocked) -> None:
    victim = blocked.waiting_ids[0]
    assert operator_api.post(f"/api/messages/{victim}/cancel", json={"reason": "duplicate", "confirm": True}).status_code == 200
    before = snapshot(backend)
    for method, path, body in [("POST", "replay", {}), ("PUT", "payload", {"payload": {"amount": 1, "customer": {"email": "e"}}})]:
        resp = operator_api.open(f"/api/messages/{victim}/{path}", method=method, json=body)
        assert resp.status_code == 409, (path, resp.status_code, resp.get_json())
    assert snapshot(backend) == before
    assert backend.ledger.message(victim)["status"] == "cancelled"


def test_fuzz_operator_injection_in_search_matches_nothing(operator_api: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    # A search is words (punctuation and operators are dropped): none of these words is in a payload.
    for q in ['{"$ne": null}', "$where", ".*", "^", "this.amount > 0", "' || 'x'=='x", "{'$gt': ''}"]:
        resp = operator_api.get(f"/api/actors/{blocked.actor}/messages", query_string={"q": q})
        assert resp.status_code == 200 and resp.get_json()["total"] == 0, q
    for key in ["q[$ne]", "status[$ne]", "$where"]:
        resp = operator_api.get(f"/api/actors/{blocked.actor}/messages", query_string={key: "x"})
        assert resp.status_code == 200 and resp.get_json()["total"] == 5, key  # an unknown parameter is ignored
    resp = operator_api.get("/api/audit", query_string={"user": '{"$ne": ""}'})
    assert resp.status_code == 200 and resp.get_json()["total"] == 0


def test_fuzz_operator_values_in_json_bodies_are_refused_or_kept_as_text(operator_api: FlaskClient, backend: Backend,
                                                                         blocked: Blocked) -> None:
    before = snapshot(backend)
    for body in [{"reason": {"$ne": None}}, {"reason": {"$where": "sleep(1000)"}}, {"reason": ["x"]}]:
        resp = operator_api.post(f"/api/actors/{blocked.actor}/pause", json=body)
        assert resp.status_code == 400, body
    resp = operator_api.put(f"/api/messages/{blocked.failed_id}/payload",
                            json={"payload": {"amount": 1, "customer": {"email": "e"}, "$where": "1"}})
    assert resp.status_code in (400, 422)
    resp = operator_api.post(f"/api/messages/{blocked.failed_id}/cancel", json={"reason": "r", "confirm": {"$ne": False}})
    assert resp.status_code == 400
    assert snapshot(backend) == before
    # A string that looks like an operator is just text.
    resp = operator_api.post(f"/api/actors/{blocked.actor}/pause", json={"reason": '{"$ne": null}'})
    assert resp.status_code == 200 and backend.ledger.actor(blocked.actor)["paused"]["reason"] == '{"$ne": null}'


def test_fuzz_html_in_payloads_is_data_not_markup(operator_api: FlaskClient, app: Flask, backend: Backend,
                                                  blocked: Blocked) -> None:
    resp = operator_api.put(f"/api/messages/{blocked.failed_id}/payload",
                            json={"payload": {"amount": 5, "customer": {"email": XSS}, "note": XSS}})
    assert resp.status_code == 200
    assert operator_api.get(f"/api/messages/{blocked.failed_id}").get_json()["payload"]["note"] == XSS
    page_client = app.test_client()
    token = csrf_token_from(page_client.get("/login").get_data(as_text=True))
    page_client.post("/login", data={"username": "vera", "password": PASSWORD, "csrf_token": token})
    for path in (f"/messages/{blocked.failed_id}", f"/actors/{blocked.actor}", "/audit"):
        html = page_client.get(path).get_data(as_text=True)
        assert "<script>alert" not in html and "<b>bold</b>" not in html, path


@pytest.mark.parametrize("body, status", [
    (b"[" * 100_000, 400), (b'{"reason":' * 50_000, 400), (b"\xff\xfe{", 400), (b'{"reason": "\xed\xa0\x80"}', 400), (b'{"reason": "\\ud800"}', 400),
    (b'{"reason": "ok"' + b" " * 2_000_000 + b"}", 413),
])
def test_fuzz_malformed_bodies_get_clear_errors(operator_api: FlaskClient, backend: Backend, blocked: Blocked,
                                                body: bytes, status: int) -> None:
    before = snapshot(backend)
    resp = operator_api.post(f"/api/actors/{blocked.actor}/pause", data=body, content_type="application/json")
    assert resp.status_code == status and resp.get_json()["error"]
    assert snapshot(backend) == before
