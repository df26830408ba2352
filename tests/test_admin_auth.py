"""Login, sessions, roles, CSRF, API tokens, security headers, settings and the command line."""
from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin import create_app
from admin.cli import main as cli_main
from admin.config import AdminConfig
from admin.users import Role, UserStore
from backend.app import Backend
from backend.errors import ConfigError, Conflict
from tests.helpers import PASSWORD, Blocked, csrf_token_from, login, make_app


def text(resp) -> str:
    return resp.get_data(as_text=True)


# -- login and sessions ---------------------------------------------------------------------------
def test_admin_auth_anonymous_is_sent_to_login_and_api_gets_401(app: Flask) -> None:
    client = app.test_client()
    resp = client.get("/actors/payment")
    assert resp.status_code == 302 and "/login?next=/actors/payment" in resp.headers["Location"]
    resp = client.get("/api/overview")
    assert resp.status_code == 401 and "authentication required" in resp.get_json()["error"]
    resp = client.post("/api/actors/payment/pause", json={"reason": "x"})
    assert resp.status_code == 401


def test_admin_auth_wrong_password_is_refused(app: Flask) -> None:
    client = app.test_client()
    resp = login(client, "ada", "not the password")
    assert resp.status_code == 401 and "Wrong user name or password" in text(resp)
    resp = login(client, "nobody", PASSWORD)
    assert resp.status_code == 401
    assert client.get("/").status_code == 302


def test_admin_auth_login_redirects_only_to_local_paths(app: Flask) -> None:
    client = app.test_client()
    token = csrf_token_from(text(client.get("/login")))
    resp = client.post("/login?next=//evil.example/x", data={"username": "vera", "password": PASSWORD, "csrf_token": token})
    assert resp.headers["Location"] == "/"
    for target in ("/\\evil.example", "https://evil.example/", "/\n//evil.example"):
        client = app.test_client()
        token = csrf_token_from(text(client.get("/login")))
        resp = client.post("/login", query_string={"next": target},
                           data={"username": "vera", "password": PASSWORD, "csrf_token": token})
        assert resp.headers["Location"] == "/", target
    client = app.test_client()
    token = csrf_token_from(text(client.get("/login")))
    resp = client.post("/login?next=/audit", data={"username": "vera", "password": PASSWORD, "csrf_token": token})
    assert resp.headers["Location"] == "/audit"


def test_admin_auth_logout_ends_the_session(viewer: FlaskClient) -> None:
    assert viewer.get("/").status_code == 200
    resp = viewer.post("/logout", follow_redirects=True)
    assert "You are logged out" in text(resp)
    assert viewer.get("/").status_code == 302


def _replay_cookie(app: Flask, cookie: str) -> FlaskClient:
    """A fresh client carrying only a copied session cookie, as a thief would."""
    thief = app.test_client()
    thief.set_cookie(app.config.get("SESSION_COOKIE_NAME", "session"), cookie)
    return thief


def test_admin_auth_logout_invalidates_a_copied_session_cookie(app: Flask, viewer: FlaskClient) -> None:
    cookie = viewer.get_cookie(app.config.get("SESSION_COOKIE_NAME", "session")).value
    assert _replay_cookie(app, cookie).get("/api/me").status_code == 200
    viewer.post("/logout")
    thief = _replay_cookie(app, cookie)
    assert thief.get("/api/me").status_code == 401
    assert thief.get("/").status_code == 302
    # Logging in again gives a new, working session; the old cookie stays dead.
    fresh = app.test_client()
    assert login(fresh, "vera").status_code == 302 and fresh.get("/api/me").status_code == 200
    assert _replay_cookie(app, cookie).get("/api/me").status_code == 401


def test_admin_auth_password_change_invalidates_open_sessions(app: Flask, viewer: FlaskClient, users: UserStore) -> None:
    assert viewer.get("/api/me").status_code == 200
    users.set_password("vera", "a-brand-new-password")
    assert viewer.get("/api/me").status_code == 401
    assert login(app.test_client(), "vera", "a-brand-new-password").status_code == 302


def test_admin_auth_login_logout_and_throttling_are_audited(backend: Backend, users: UserStore, admin_client: FlaskClient) -> None:
    app = make_app(backend, ADMIN_LOGIN_LIMITS="2 per minute")
    client = app.test_client()
    assert login(client, "otto").status_code == 302
    client.post("/logout")
    for _ in range(2):
        assert login(client, "otto", "wrong-password").status_code == 401
    assert login(client, "otto").status_code == 429
    for _ in range(2):
        assert login(client, "not-a-user").status_code == 401
    assert login(client, "not-a-user").status_code == 429
    items = admin_client.get("/api/audit?per_page=200").get_json()["items"]
    otto = [r["action"] for r in items if r["user"] == "otto"]
    assert sorted(otto) == ["login", "login.throttled", "logout"]
    assert [r["user"] for r in items if r["action"] == "login.throttled"].count("(unknown)") == 1
    assert all("wrong-password" not in str(r) and "not-a-user" not in str(r) for r in items)
    assert admin_client.get("/api/audit?action=logout").get_json()["items"][0]["user"] == "otto"


def test_admin_auth_user_names_are_unique_and_found_without_regard_to_case(
        app: Flask, users: UserStore, admin_client: FlaskClient, backend: Backend) -> None:
    admin_client.post("/api/users", json={"username": "viewer1", "password": PASSWORD, "role": "viewer"})
    resp = admin_client.post("/api/users", json={"username": "VIEWER1", "password": PASSWORD, "role": "admin"})
    assert resp.status_code == 409 and "ignore case" in resp.get_json()["error"]
    with pytest.raises(Conflict):
        users.create("Otto", PASSWORD, "admin")
    assert sorted(u["_id"] for u in users.all()) == ["ada", "otto", "vera", "viewer1"]
    # Logging in ignores case; the session, the audit trail and the role are the user's own.
    client = app.test_client()
    assert login(client, "OTTO").status_code == 302
    me = client.get("/api/me").get_json()
    assert me["name"] == "otto" and me["role"] == "operator"
    assert backend.audit.find(action="login", user="otto")[1] == 1
    # Admin actions find the user whatever the case, and keep its own spelling.
    assert admin_client.put("/api/users/VERA/role", json={"role": "operator"}).get_json()["name"] == "vera"
    # "You cannot remove your own admin role" holds whatever the case you type.
    assert admin_client.put("/api/users/ADA/role", json={"role": "viewer"}).status_code == 400


def test_admin_auth_users_from_before_case_insensitive_names(backend: Backend) -> None:
    """Users stored before names ignored case get their key at start; two names that differ only
    in case stop the console with one line naming them."""
    from werkzeug.security import generate_password_hash

    with backend.store.op() as db:
        db.users.insert_one({"_id": "Legacy", "password_hash": generate_password_hash(PASSWORD), "role": "viewer"})
    assert UserStore(backend.store).authenticate("legacy", PASSWORD).name == "Legacy"
    with backend.store.op() as db:
        db.users.drop_index("name_key")
        db.users.insert_one({"_id": "LEGACY", "password_hash": "x", "role": "admin"})
    with pytest.raises(ConfigError, match="Legacy / LEGACY"):
        UserStore(backend.store)


def test_admin_auth_session_expires(backend: Backend, users: UserStore) -> None:
    app = make_app(backend, ADMIN_SESSION_MINUTES="1")
    assert app.config["PERMANENT_SESSION_LIFETIME"] == timedelta(minutes=1)
    client = app.test_client()
    login(client, "vera")
    assert client.get("/").status_code == 200
    # The signed cookie carries its time; Flask refuses it once older than the lifetime.
    app.permanent_session_lifetime = timedelta(seconds=-1)
    assert client.get("/").status_code == 302


def test_admin_auth_role_change_applies_to_the_open_session(viewer: FlaskClient, users: UserStore, blocked: Blocked) -> None:
    assert viewer.post(f"/messages/{blocked.failed_id}/replay").status_code == 403
    users.set_role("vera", Role.OPERATOR)
    assert viewer.post(f"/messages/{blocked.failed_id}/replay").status_code == 302


# -- roles -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/actors/payment/pause",
        "/actors/payment/resume",
        "/messages/{failed}/edit",
        "/messages/{failed}/replay",
        "/messages/{failed}/cancel",
        "/users",
    ],
)
def test_admin_auth_viewer_cannot_act(viewer: FlaskClient, backend: Backend, blocked: Blocked, path: str) -> None:
    before = backend.ledger.message(blocked.failed_id)
    resp = viewer.post(path.format(failed=blocked.failed_id),
                       data={"reason": "r", "payload": "{}", "confirm": "yes", "username": "x", "password": "y" * 9, "role": "admin"})
    assert resp.status_code == 403
    assert "needs the" in text(resp)
    assert backend.ledger.message(blocked.failed_id) == before
    assert backend.ledger.actor("payment")["paused"] is None
    # Only the viewer's own login is in the audit trail: no action was recorded.
    assert [r["action"] for r in backend.audit.find()[0]] == ["login"]


def test_admin_auth_viewer_replay_over_api_is_403(viewer: FlaskClient, backend: Backend, blocked: Blocked) -> None:
    resp = viewer.post(f"/api/messages/{blocked.failed_id}/replay", json={})
    assert resp.status_code == 403
    assert "operator" in resp.get_json()["error"]
    assert backend.ledger.message(blocked.failed_id)["replay_requested"] is None


def test_admin_auth_operator_cannot_manage_users(operator: FlaskClient, users: UserStore) -> None:
    assert operator.get("/users").status_code == 403
    assert operator.get("/api/users").status_code == 403
    assert operator.post("/api/users", json={"username": "mallory", "password": "x" * 12, "role": "admin"}).status_code == 403
    assert users.get("mallory") is None


# -- CSRF ------------------------------------------------------------------------------------------
def test_admin_auth_form_post_without_csrf_token_is_rejected(csrf_app: Flask, backend: Backend, blocked: Blocked) -> None:
    client = csrf_app.test_client()
    assert login(client, "otto").status_code == 302
    resp = client.post("/actors/payment/pause", data={"reason": "no token"})
    assert resp.status_code == 400 and "CSRF" in text(resp)
    resp = client.post("/api/actors/payment/pause", json={"reason": "no token"})
    assert resp.status_code == 400 and "CSRF" in resp.get_json()["error"]
    assert backend.ledger.actor("payment")["paused"] is None


def test_admin_auth_login_without_csrf_token_is_rejected(csrf_app: Flask) -> None:
    client = csrf_app.test_client()
    resp = client.post("/login", data={"username": "ada", "password": PASSWORD})
    assert resp.status_code == 400
    assert client.get("/").status_code == 302


def test_admin_auth_csrf_token_accepted_in_form_and_header(csrf_app: Flask, backend: Backend, blocked: Blocked) -> None:
    client = csrf_app.test_client()
    login(client, "otto")
    token = csrf_token_from(text(client.get("/actors/payment")))
    resp = client.post("/actors/payment/pause", data={"reason": "with token", "csrf_token": token})
    assert resp.status_code == 302
    assert backend.ledger.actor("payment")["paused"]["reason"] == "with token"
    api_token = client.get("/api/me").get_json()["csrf_token"]
    resp = client.post("/api/actors/payment/resume", json={}, headers={"X-CSRFToken": api_token})
    assert resp.status_code == 200 and resp.get_json()["paused"] is None


# -- API tokens ------------------------------------------------------------------------------------
def test_admin_auth_bearer_token_works_without_csrf_and_can_be_revoked(csrf_app: Flask, users: UserStore, backend: Backend, blocked: Blocked) -> None:
    token, record = users.create_token("otto", "ci")
    client = csrf_app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    me = client.get("/api/me", headers=auth).get_json()
    assert me["name"] == "otto" and me["auth"] == "token" and "csrf_token" not in me
    resp = client.post("/api/actors/payment/pause", json={"reason": "from CI"}, headers=auth)
    assert resp.status_code == 200
    assert backend.audit.find(action="pause")[0][0]["user"] == "otto"
    assert "Set-Cookie" not in resp.headers
    users.revoke_token(record["_id"])
    assert client.get("/api/me", headers=auth).status_code == 401


def test_admin_auth_bad_bearer_tokens_are_401(app: Flask) -> None:
    client = app.test_client()
    for value in ("Bearer nonsense", "Bearer fq_abc.def", "Bearer fq_", "Bearer "):
        resp = client.get("/api/overview", headers={"Authorization": value})
        assert resp.status_code == 401, value
    assert client.get("/", headers={"Authorization": "Bearer x"}).status_code == 401


def test_admin_auth_tokens_are_stored_hashed(users: UserStore, backend: Backend) -> None:
    token, record = users.create_token("vera")
    with backend.store.op() as db:
        stored = db.api_tokens.find_one({"_id": record["_id"]})
        user_doc = db.users.find_one({"_id": "vera"})
    assert token.split(".", 1)[1] not in str(stored)
    assert PASSWORD not in str(user_doc)


# -- headers and cookies ---------------------------------------------------------------------------
def test_admin_auth_security_headers_and_cookie_flags(backend: Backend, users: UserStore, viewer: FlaskClient) -> None:
    resp = viewer.get("/")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in text(resp).replace('<script src="/static/console.js" defer></script>', "")
    prod = make_app(backend, ADMIN_ENV="production", ADMIN_SECRET_KEY="k" * 40)
    assert prod.config["SESSION_COOKIE_SECURE"] is True
    assert prod.config["SESSION_COOKIE_HTTPONLY"] is True and prod.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    client = prod.test_client()
    page = client.get("/login")
    token = csrf_token_from(text(page))
    resp = client.post("/login", data={"username": "vera", "password": PASSWORD, "csrf_token": token},
                       base_url="https://localhost")
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


# -- settings -------------------------------------------------------------------------------------
def test_admin_auth_settings_require_a_secret_key_in_production(backend: Backend) -> None:
    with pytest.raises(ConfigError, match="ADMIN_SECRET_KEY is required"):
        AdminConfig.from_env({})
    with pytest.raises(ConfigError, match="at least 32"):
        AdminConfig.from_env({"ADMIN_SECRET_KEY": "short"})
    with pytest.raises(ConfigError, match="ADMIN_SESSION_MINUTES"):
        AdminConfig.from_env({"ADMIN_ENV": "development", "ADMIN_SESSION_MINUTES": "soon"})
    with pytest.raises(ConfigError, match="ADMIN_ENV"):
        AdminConfig.from_env({"ADMIN_ENV": "staging"})
    with pytest.raises(ConfigError, match="ADMIN_PORT"):
        AdminConfig.from_env({"ADMIN_ENV": "development", "ADMIN_PORT": "99999"})
    with pytest.raises(ConfigError):
        create_app(backend, config={"ADMIN_ENV": "production", "ADMIN_SECRET_KEY": ""})
    dev = AdminConfig.from_env({"ADMIN_ENV": "development"})
    assert len(dev.secret_key) >= 32 and dev.session_minutes == 60 and (dev.host, dev.port) == ("127.0.0.1", 5000)


# -- command line ---------------------------------------------------------------------------------
def test_admin_auth_cli_create_user_reads_password_from_stdin(backend: Backend, monkeypatch, run_cli) -> None:
    monkeypatch.setenv("MONGODB_URL", backend.settings.mongodb_url)
    monkeypatch.setenv("MONGODB_DB", backend.settings.mongodb_db)
    res = run_cli(cli_main, ["create-user", "root", "--role", "admin", "--password-stdin", "--allow-embedded"],
                  input="s3cret-enough\n")
    assert res.code == 0 and "created user root with role admin" in res.stdout
    assert UserStore(backend.store).authenticate("root", "s3cret-enough").role is Role.ADMIN


@pytest.mark.parametrize(
    "argv, stdin, expected",
    [
        (["create-user", "bad name!", "--password-stdin", "--allow-embedded"], "long-enough-pw\n", "user name"),
        (["create-user", "bob", "--password-stdin", "--allow-embedded"], "short\n", "at least 8"),
        (["create-user", "bob", "--password-stdin"], "long-enough-pw\n", "MONGODB_URL is not set"),
        (["create-user", "bob", "--password-stdin", "embedded"], "long-enough-pw\n", "ADMIN_BOOTSTRAP_USER"),
    ],
)
def test_admin_auth_cli_bad_input_exits_non_zero_with_one_line(backend: Backend, monkeypatch, run_cli, argv, stdin,
                                                              expected) -> None:
    if argv[-1] == "embedded":
        argv = argv[:-1]
        monkeypatch.setenv("MONGODB_URL", "embedded://127.0.0.1:9")
    elif "--allow-embedded" in argv:
        monkeypatch.setenv("MONGODB_URL", backend.settings.mongodb_url)
    else:
        monkeypatch.delenv("MONGODB_URL", raising=False)
    res = run_cli(cli_main, argv, input=stdin)
    err = res.stderr.strip()
    assert res.code == 2
    assert expected in err and len(err.splitlines()) == 1


def test_admin_auth_cli_duplicate_user_and_bad_role(backend: Backend, monkeypatch, run_cli) -> None:
    monkeypatch.setenv("MONGODB_URL", backend.settings.mongodb_url)
    monkeypatch.setenv("MONGODB_DB", backend.settings.mongodb_db)
    argv = ["create-user", "dup", "--password-stdin", "--allow-embedded"]
    assert run_cli(cli_main, argv, input="long-enough-pw\n").code == 0
    again = run_cli(cli_main, argv, input="long-enough-pw\n")
    assert again.code == 2 and "already exists" in again.stderr
    bad_role = run_cli(cli_main, ["create-user", "x", "--role", "root"], input="")
    assert bad_role.code == 2 and bad_role.stderr.count("\n") == 1 and "--role" in bad_role.stderr


def test_admin_auth_serve_runs_the_console_and_bootstraps_the_first_admin(settings, tmp_path) -> None:
    """`python -m admin serve` in a real process: login page, bootstrap admin, token-less API 401."""
    import os
    import re as _re
    import socket
    import subprocess
    import sys

    import requests

    from tests.helpers import wait_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ADMIN_ENV="development", ADMIN_PORT=str(port), FIFOQ_PREFIX=settings.prefix,
               ADMIN_BOOTSTRAP_USER="boot", ADMIN_BOOTSTRAP_PASSWORD="bootstrap-pw", MONGODB_URL="")
    with open(tmp_path / "serve.log", "w") as serve_log:  # the process keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "admin", "serve"], env=env,
                                cwd=os.path.dirname(os.path.dirname(__file__)), stdout=subprocess.DEVNULL, stderr=serve_log)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(f"{base}/login", timeout=2).status_code == 200
            except requests.RequestException:
                return proc.poll() is not None

        wait_for(up, timeout=30, interval=0.2, what="the console to listen")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        session = requests.Session()
        token = _re.search(r'name="csrf_token" value="([^"]+)"', session.get(f"{base}/login", timeout=5).text).group(1)
        resp = session.post(f"{base}/login", data={"username": "boot", "password": "bootstrap-pw", "csrf_token": token},
                            timeout=5, allow_redirects=False)
        assert resp.status_code == 302
        assert session.get(f"{base}/api/me", timeout=5).json()["role"] == "admin"
        assert requests.get(f"{base}/api/me", timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_admin_auth_serve_refuses_to_start_without_a_secret_in_production(settings) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ADMIN_SECRET_KEY"}
    env.update(ADMIN_ENV="production", FIFOQ_PREFIX=settings.prefix)
    out = subprocess.run([sys.executable, "-m", "admin", "serve"], env=env, capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ADMIN_SECRET_KEY is required")
