"""Authentication (flask-login sessions, bearer tokens for the API), roles and CSRF.

- A browser logs in with a password; the session cookie is signed, HttpOnly, SameSite=Lax and
  expires after ADMIN_SESSION_MINUTES of inactivity (Flask refuses an older cookie).
- An API client sends `Authorization: Bearer fq_...`; no cookie, so no CSRF token is needed.
- Every state-changing request authenticated by the session must carry a CSRF token (form field
  `csrf_token` or header `X-CSRFToken`).
- Repeated failed logins are throttled per user name and client address, or trusted device
  (admin.throttle).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFProtect

from admin import throttle
from admin.users import Role, User, UserStore
from backend.audit import AuditEntry
from backend.errors import StoreError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

csrf = CSRFProtect()
login_manager = LoginManager()
bp = Blueprint("auth", __name__)

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
SESSION_VERSION_KEY = "fq_session_version"


def users() -> UserStore:
    return current_app.extensions["fifoq_users"]


def is_api_request() -> bool:
    # /metrics too: Prometheus scrapes it with a bearer token and wants a 401, not a login page.
    return request.blueprint == "api" or request.path.startswith("/api/") or request.path == "/metrics"


def init_app(app: Flask) -> None:
    # CSRF is checked in our own hook: session requests need it, bearer-token requests do not.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config.setdefault("WTF_CSRF_HEADERS", ["X-CSRFToken", "X-CSRF-Token"])
    # The session cookie's own lifetime is the limit; the CSRF token need not expire sooner.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = "basic"
    app.before_request(_authenticate_and_check_csrf)
    app.register_blueprint(bp)


@login_manager.user_loader
def _load_user(name: str) -> User | None:
    # Read on every request: a role change or a disabled account takes effect at once.
    try:
        user = users().get(name)
    except (StoreError, ConnectionError, EOFError) as exc:
        # Remembered so that protected pages answer "ledger unreachable" (503), not "log in".
        g.user_store_error = exc
        return None
    if user is None or not user.active:
        return None
    # A cookie from before a logout or a password change carries an older version: refused, so a
    # copied cookie dies with the session it was copied from.
    if session.get(SESSION_VERSION_KEY) != user.session_version:
        return None
    return user


def _audit(user: str, action: str, **details: Any) -> None:
    """Login events in the audit trail; a store failure is logged, never turns a login into a 500."""
    backend = current_app.extensions.get("fifoq")
    if backend is None:
        return
    try:
        backend.audit.record(AuditEntry(user, action, details={k: v for k, v in details.items() if v is not None}))
    except (StoreError, ConnectionError, EOFError) as exc:
        log.warning("could not audit %s for %s: %s", action, user, exc)


@login_manager.unauthorized_handler
def _unauthorized() -> Any:
    if is_api_request():
        return jsonify(error="authentication required: log in or send 'Authorization: Bearer <token>'"), 401
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))


def _authenticate_and_check_csrf() -> Any:
    header = request.headers.get("Authorization", "")
    g.auth_via = "session"
    if header.startswith("Bearer "):
        if not is_api_request():
            return jsonify(error="bearer tokens are accepted under /api/ only"), 401
        user = users().user_for_token(header[len("Bearer "):].strip())  # StoreError -> 503
        if user is None:
            return jsonify(error="invalid or revoked API token"), 401
        # flask-login keeps the request's user in g._login_user; setting it authenticates this
        # request only, without touching the session cookie.
        g._login_user = user
        g.auth_via = "token"
        return None
    if request.method in UNSAFE_METHODS and current_app.config.get("WTF_CSRF_ENABLED", True):
        csrf.protect()  # raises CSRFError (400) when the token is missing or wrong
    return None


def require_role(role: Role) -> Callable[[F], F]:
    """401 (API) or redirect to login when anonymous; 403 when the role is insufficient."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                if g.get("user_store_error") is not None:
                    raise g.user_store_error
                return login_manager.unauthorized()
            if not current_user.can(role):
                log.info("user %s (%s) denied %s %s: needs %s", current_user.name, current_user.role.value,
                         request.method, request.path, role.value)
                abort(403, description=f"this needs the {role.value} role (you are {current_user.role.value})")
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def acting_user() -> str:
    """The name recorded in the audit log for the current request."""
    return current_user.name


def _safe_next(target: str | None) -> str:
    # Only same-site relative paths: an open redirect after login would help phishing.
    # Browsers read "/\\host" as "//host": refuse backslashes and control characters too.
    if (target and target.startswith("/") and not target.startswith("//") and "\\" not in target
            and target.isprintable() and not urlsplit(target).netloc):
        return target
    return url_for("views.overview")


def _shown(name: str) -> str:
    """An attempted user name as a log line may show it: only when such a user exists, since people
    type their password into the user name field."""
    return repr(name[:64]) if users().get(name) is not None else f"an unknown user name ({len(name)} characters)"


def login_throttled(name: str, wait: int) -> None:
    """A login refused by the throttle (admin.throttle), before any password check."""
    user = users().get(name)
    log.warning("login throttled for %s from %s (retry in %ds)", _shown(name), request.remote_addr, wait)
    # Only a real user name goes into the audit trail: people type passwords there.
    _audit(user.name if user is not None else "(unknown)", "login.throttled",
           address=request.remote_addr, retry_after=wait)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Failed logins (401) are throttled per user name and address, or trusted device: the view
    is wrapped by admin.throttle, which answers 429 before it runs."""
    if request.method == "POST":
        name = request.form.get("username", "")
        user = users().authenticate(name, request.form.get("password", ""))
        if user is None:
            log.info("failed login for %s from %s", _shown(name), request.remote_addr)
            flash("Wrong user name or password.", "error")
            return render_template("login.html", username=name), 401
        session.clear()
        session.permanent = True  # PERMANENT_SESSION_LIFETIME applies
        session[SESSION_VERSION_KEY] = user.session_version
        login_user(user)
        log.info("user %s logged in from %s", user.name, request.remote_addr)
        _audit(user.name, "login", address=request.remote_addr)
        resp = redirect(_safe_next(request.args.get("next")))
        throttle.remember_device(resp, user.name)
        return resp
    return render_template("login.html", username="")


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    if current_user.is_authenticated and g.get("auth_via") == "session":
        log.info("user %s logged out", current_user.name)
        users().end_sessions(current_user.name)
        _audit(current_user.name, "logout", address=request.remote_addr)
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
