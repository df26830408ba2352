"""Console hardening: login throttling shared through the store, security headers on every kind of
response, no inline script, request size limits, and no secret in any log line."""
from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from admin import cli, create_app
from admin.security import LoginThrottle, body_limit
from admin.users import UserStore
from backend.app import Backend
from backend.settings import Settings
from tests.helpers import PASSWORD, Blocked, csrf_token_from, make_app

WRONG = "not the password"


def attempt(app: Flask, name: str, password: str, address: str = "10.0.0.1") -> Any:
    client = app.test_client()
    return client.post("/login", data={"username": name, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def test_security_login_throttled_per_user_after_five_failures(app: Flask) -> None:
    for i in range(5):
        assert attempt(app, "ada", WRONG, f"10.0.1.{i}").status_code == 401
    # From a fresh address and with the right password: still refused, without a password check.
    resp = attempt(app, "ada", PASSWORD, "10.0.1.99")
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 300
    assert "Too many failed logins" in resp.get_data(as_text=True)
    # Other users are not affected.
    assert attempt(app, "otto", PASSWORD, "10.0.1.98").status_code == 302


def test_security_login_throttled_per_address(app: Flask) -> None:
    for i in range(5):
        assert attempt(app, f"nobody{i}", WRONG, "10.0.2.1").status_code == 401
    assert attempt(app, "vera", PASSWORD, "10.0.2.1").status_code == 429
    assert attempt(app, "vera", PASSWORD, "10.0.2.2").status_code == 302


def test_security_login_throttle_is_shared_between_console_processes(backend: Backend, users: UserStore) -> None:
    """Two consoles over one store (two processes over one MongoDB) share the failures."""
    first, second = make_app(backend), make_app(backend)
    for i in range(3):
        assert attempt(first, "ada", WRONG, f"10.0.3.{i}").status_code == 401
    for i in range(2):
        assert attempt(second, "ada", WRONG, f"10.0.4.{i}").status_code == 401
    assert attempt(first, "ada", PASSWORD, "10.0.5.1").status_code == 429
    assert attempt(second, "ada", PASSWORD, "10.0.5.2").status_code == 429


def test_security_login_throttle_ends_after_the_window_and_success_resets_the_user(app: Flask, backend: Backend) -> None:
    for i in range(5):
        attempt(app, "ada", WRONG, f"10.0.6.{i}")
    assert attempt(app, "ada", PASSWORD, "10.0.6.50").status_code == 429
    # Given the failures are older than the window (moved back in the store rather than waiting),
    with backend.store.op() as db:
        for doc in list(db.login_failures.find({"key": LoginThrottle.keys("ada", None)[0]})):
            db.login_failures.update_one({"_id": doc["_id"]}, {"$set": {"at": doc["at"] - timedelta(seconds=301)}})
    # then the user may log in again, and that success clears its count.
    assert attempt(app, "ada", PASSWORD, "10.0.6.51").status_code == 302
    for i in range(4):
        assert attempt(app, "ada", WRONG, f"10.0.7.{i}").status_code == 401
    assert attempt(app, "ada", PASSWORD, "10.0.7.50").status_code == 302


def test_security_login_throttle_settings(backend: Backend, users: UserStore) -> None:
    app = make_app(backend, ADMIN_LOGIN_MAX_FAILURES="2", ADMIN_LOGIN_WINDOW_SECONDS="60")
    attempt(app, "ada", WRONG)
    attempt(app, "ada", WRONG, "10.9.9.9")
    resp = attempt(app, "ada", PASSWORD, "10.9.9.8")
    assert resp.status_code == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    from backend.errors import ConfigError

    with pytest.raises(ConfigError, match="ADMIN_LOGIN_MAX_FAILURES"):
        make_app(backend, ADMIN_LOGIN_MAX_FAILURES="many")


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
        cli.bootstrap_admin(app.extensions["fifoq_users"], "root", admin_password)
        client = app.test_client()
        token = csrf_token_from(client.get("/login").get_data(as_text=True))
        for _ in range(6):
            client.post("/login", data={"username": "root", "password": typed_password, "csrf_token": token})
        client.post("/login", data={"username": typed_password, "password": typed_password, "csrf_token": token},
                    environ_base={"REMOTE_ADDR": "10.1.1.1"})
        other = app.test_client()
        token = csrf_token_from(other.get("/login", environ_base={"REMOTE_ADDR": "10.1.1.2"}).get_data(as_text=True))
        assert other.post("/login", data={"username": "root", "password": admin_password, "csrf_token": token},
                          environ_base={"REMOTE_ADDR": "10.1.1.2"}).status_code == 429  # throttled user
        other.get("/api/overview")  # the management API refuses api_password: logged, redacted
        be.subscriptions.actor("payment")
        be.subscriptions.subscribe("payment", "order.paid")
        be.declare()  # the broker refuses amqp_password: logged, redacted
        be.emit_event("order.paid", {"password": "a payload field, not a secret"})
    finally:
        be.close()
        logging.getLogger("pika").setLevel(logging.WARNING)
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    with be.store.op() as db:  # nor in what the throttle keeps
        text += repr(list(db.login_failures.find()))
    assert "admin console ready" in text and "failed login" in text and "throttled" in text
    leaked = [secret for secret in secrets if secret in text]
    assert not leaked, leaked
