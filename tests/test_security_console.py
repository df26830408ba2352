"""Console hardening: login throttling that slows guessing without locking anyone out, security
headers on every kind of response, no inline script, request size limits, and no secret in any
log line."""
from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin import accounts, create_app
from admin.security import body_limit
from admin.throttle import ThrottleConfig
from admin.users import UserStore
from backend.app import Backend
from backend.settings import Settings
from tests.helpers import PASSWORD, Blocked, csrf_token_from, make_app

WRONG = "not the password"


def attempt(app: Flask, name: str, password: str, address: str = "10.0.0.1", client: FlaskClient | None = None) -> Any:
    client = client or app.test_client()
    return client.post("/login", data={"username": name, "password": password},
                       environ_base={"REMOTE_ADDR": address})


# -- login throttling (admin/throttle.py) ---------------------------------------------------------
def test_security_login_attacker_is_slowed_on_their_own_address(app: Flask, backend: Backend) -> None:
    """Given 5 wrong passwords for ada from one address, the 6th attempt from there is refused
    before the password is checked (the right one too), with how long to wait."""
    for _ in range(5):
        assert attempt(app, "ada", WRONG, "10.0.1.1").status_code == 401
    resp = attempt(app, "ada", PASSWORD, "10.0.1.1")
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert "Too many failed logins" in resp.get_data(as_text=True)
    # The name is compared without regard to case: ADA is ada, throttled as well.
    assert attempt(app, "ADA", PASSWORD, "10.0.1.1").status_code == 429
    audited = backend.audit.find(action="login.throttled")[0]
    assert [e["user"] for e in audited] == ["ada", "ada"] and audited[0]["details"]["address"] == "10.0.1.1"


def test_security_login_attacker_does_not_lock_anyone_out(app: Flask) -> None:
    """An attacker's failures stop neither the user elsewhere nor other users at their address."""
    for _ in range(10):
        attempt(app, "ada", WRONG, "10.0.2.1")
    assert attempt(app, "ada", WRONG, "10.0.2.1").status_code == 429
    assert attempt(app, "ada", PASSWORD, "10.0.2.2").status_code == 302  # the admin, elsewhere
    assert attempt(app, "otto", PASSWORD, "10.0.2.1").status_code == 302  # another user, same address
    assert attempt(app, "vera", PASSWORD, "10.0.2.3").status_code == 302  # another user, elsewhere


def test_security_login_trusted_device_gets_in_from_a_throttled_address(app: Flask) -> None:
    """A browser that logged in as ada before (a trusted device) still logs in as ada while a
    guesser behind the same address (a NAT, a proxy) is throttled for that name."""
    trusted = app.test_client()
    assert attempt(app, "ada", PASSWORD, "10.0.3.1", client=trusted).status_code == 302
    assert trusted.get("/api/me").get_json()["name"] == "ada"
    for _ in range(5):
        assert attempt(app, "ada", WRONG, "10.0.3.1").status_code == 401
    assert attempt(app, "ada", PASSWORD, "10.0.3.1").status_code == 429  # any other browser there
    assert trusted.get("/api/me").status_code == 200  # the open session is untouched
    assert attempt(app, "ada", PASSWORD, "10.0.3.1", client=trusted).status_code == 302
    # The device cookie is ada's only: for another name the browser counts as its address.
    assert attempt(app, "otto", WRONG, "10.0.3.1", client=trusted).status_code == 401
    # and a forged or foreign cookie is no device at all.
    forger = app.test_client()
    forger.set_cookie("fifoq_device", "forged", path="/login")
    assert attempt(app, "ada", PASSWORD, "10.0.3.1", client=forger).status_code == 429


def test_security_login_throttle_backs_off_along_the_ladder(backend: Backend, users: UserStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rung of ADMIN_LOGIN_LIMITS makes the next wait longer (a clock moved by hand)."""
    app = make_app(backend, ADMIN_LOGIN_LIMITS="2 per minute; 3 per hour")
    now = [time.time()]
    monkeypatch.setattr(time, "time", lambda: now[0])
    for _ in range(2):
        assert attempt(app, "ada", WRONG).status_code == 401
    first = attempt(app, "ada", PASSWORD)
    assert first.status_code == 429 and int(first.headers["Retry-After"]) <= 61
    now[0] += 61
    assert attempt(app, "ada", WRONG).status_code == 401  # the third failure this hour
    now[0] += 61
    second = attempt(app, "ada", PASSWORD)
    assert second.status_code == 429 and 61 < int(second.headers["Retry-After"]) <= 3600
    now[0] += 3600
    assert attempt(app, "ada", PASSWORD).status_code == 302


def test_security_login_throttle_settings(backend: Backend, users: UserStore) -> None:
    app = make_app(backend, ADMIN_LOGIN_LIMITS="1 per 10 minutes")
    attempt(app, "ada", WRONG)
    resp = attempt(app, "ada", PASSWORD)
    assert resp.status_code == 429 and 1 <= int(resp.headers["Retry-After"]) <= 601
    from backend.errors import ConfigError

    for name, value in (("ADMIN_LOGIN_LIMITS", "many"), ("ADMIN_LOGIN_LIMITS", "0 per minute"),
                        ("ADMIN_LOGIN_STORAGE", "ftp://somewhere")):
        with pytest.raises(ConfigError, match=name):
            make_app(backend, **{name: value})


def test_security_login_throttle_storage_is_shared_by_every_worker_on_mongodb() -> None:
    """On MongoDB the counts live in the ledger's database, which every gunicorn worker and every
    console replica reach; with an in-process store, in memory (the console runs one worker)."""
    mongo = Settings.from_env({"MONGODB_URL": "mongodb://db1,db2/?replicaSet=rs0", "MONGODB_DB": "ledger"})
    cfg = ThrottleConfig.from_env({})
    assert cfg.storage_uri(mongo) == "mongodb://db1,db2/?replicaSet=rs0"
    assert cfg.storage_options(mongo)["database_name"] == "ledger"
    assert cfg.storage_uri(Settings.from_env({})) == "memory://" and cfg.storage_options(Settings.from_env({})) == {}
    assert ThrottleConfig.from_env({"ADMIN_LOGIN_STORAGE": "memory://"}).storage_uri(mongo) == "memory://"


def test_security_headers_on_every_kind_of_response(app: Flask, blocked: Blocked) -> None:
    client = app.test_client()
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"username": "ada", "password": PASSWORD, "csrf_token": token}).status_code == 302
    paths = ["/", "/login", f"/actors/{blocked.actor}", f"/messages/{blocked.failed_id}", "/audit", "/users",
             "/api/overview", "/api/me", "/no-such-page", "/api/no-such-endpoint", "/actors/%2E%2E%2Fetc"]
    for path in paths:
        resp = client.get(path)
        assert resp.status_code < 500, path
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["Cache-Control"] == "no-store", path
        if resp.mimetype == "text/html":
            html = resp.get_data(as_text=True)
            # CSP forbids inline script: every <script> has a src, no inline event handler or style.
            assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), path
            assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE), path
            assert " style=" not in html, path
            # The failed message's payload carries a <script>: shown as text only.
            assert "<script>alert" not in html, path


def test_security_body_limit_follows_the_payload_limit(backend: Backend, users: UserStore) -> None:
    small = backend.settings.with_(max_payload_bytes=1000)
    be = Backend(small, store=backend.store)
    try:
        app = create_app(be, config={"ADMIN_ENV": "testing", "WTF_CSRF_ENABLED": False})
        assert app.config["MAX_CONTENT_LENGTH"] == body_limit(1000)
        client = app.test_client()
        client.post("/login", data={"username": "otto", "password": PASSWORD})
        resp = client.post("/api/actors/payment/pause", data=b'{"reason": "' + b"x" * body_limit(1000) + b'"}',
                           content_type="application/json")
        assert resp.status_code == 413
        assert "limit is" in resp.get_json()["error"]
    finally:
        be.close()


def test_security_no_secret_in_any_log_line(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Given secrets in every setting that has one, when the console starts, bootstraps its first
    admin, sees failed, throttled and good logins and the backend emits, then no log line holds
    any of the secrets."""
    amqp_password = "amqp-S3cret-" + settings.prefix
    api_password = "api-S3cret-" + settings.prefix
    secret_key = "k3y-" + "z" * 40
    admin_password = "admin-S3cret-" + settings.prefix
    typed_password = "typed-S3cret-" + settings.prefix
    secrets = [amqp_password, api_password, secret_key, admin_password, typed_password]
    caplog.set_level(logging.DEBUG)
    for name in ("pika", "urllib3", "werkzeug"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    # The broker refuses this password: connection errors get logged and must be redacted too.
    s = settings.with_(amqp_urls=(f"amqp://guest:{amqp_password}@127.0.0.1:5672/%2F",), api_password=api_password)
    be = Backend(s)
    try:
        app = create_app(be, config={"ADMIN_ENV": "production", "ADMIN_SECRET_KEY": secret_key,
                                     "SESSION_COOKIE_SECURE": False})
        accounts.bootstrap_admin(app.extensions["fifoq_users"], "root", admin_password)
        client = app.test_client()
        token = csrf_token_from(client.get("/login").get_data(as_text=True))
        for _ in range(6):
            client.post("/login", data={"username": "root", "password": typed_password, "csrf_token": token})
        for _ in range(6):
            client.post("/login", data={"username": typed_password, "password": typed_password, "csrf_token": token},
                        environ_base={"REMOTE_ADDR": "10.1.1.1"})
        assert client.post("/login", data={"username": "root", "password": admin_password,
                                           "csrf_token": token}).status_code == 429  # throttled here
        other = app.test_client()
        token = csrf_token_from(other.get("/login", environ_base={"REMOTE_ADDR": "10.1.1.2"}).get_data(as_text=True))
        assert other.post("/login", data={"username": "root", "password": admin_password, "csrf_token": token},
                          environ_base={"REMOTE_ADDR": "10.1.1.2"}).status_code == 302  # not from elsewhere
        other.get("/api/overview")  # the management API refuses api_password: logged, redacted
        be.subscriptions.actor("payment")
        be.subscriptions.subscribe("payment", "order.paid")
        be.declare()  # the broker refuses amqp_password: logged, redacted
        be.emit_event("order.paid", {"password": "a payload field, not a secret"})
    finally:
        be.close()
        logging.getLogger("pika").setLevel(logging.WARNING)
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    text += repr(vars(app.extensions["fifoq_login_limiter"].storage))  # nor in what the throttle keeps
    assert "admin console ready" in text and "failed login" in text and "throttled" in text
    leaked = [secret for secret in secrets if secret in text]
    assert not leaked, leaked
