"""Login throttling: slow password guessing without letting anyone lock others out (Flask-Limiter).

- Failed logins are counted per (user name, client address): a guesser slows down only their
  own attempts at that name, from their own address. Nobody can lock a user out from elsewhere,
  and one address guessing at one name does not stop other users there.
- A browser that logged in as a user before carries a signed "trusted device" cookie for that
  user (OWASP's device cookies): its failures and its throttle are counted per (user name,
  device) instead, so a guesser behind the same address (a NAT, a proxy) does not lock it out.
- The limits are a ladder (ADMIN_LOGIN_LIMITS, default "5 per minute; 20 per hour; 100 per
  day", moving windows): after 5 failures the next try waits up to a minute, after 20 up to an
  hour, after 100 up to a day. A throttled attempt is answered 429 with Retry-After before the
  password is checked, and audited as login.throttled.
- Where the counts live (ADMIN_LOGIN_STORAGE, any storage URI of the `limits` library): by
  default the ledger's MongoDB (MONGODB_URL, database MONGODB_DB, collections login_limits and
  login_limit_windows), so that every gunicorn worker and every console replica share them;
  `memory://` when the store lives in the process (MONGODB_URL empty, mongomock://, embedded://),
  where the console runs one worker (admin.server) and memory is exact.

Behind a reverse proxy every client has the proxy's address: wrap the app in werkzeug's ProxyFix
so that request.remote_addr is the client's, or the per-address part counts the proxy.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, current_app, flash, g, make_response, render_template, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse_many
from limits.errors import ConfigurationError
from limits.storage import SCHEMES
from pydantic import field_validator
from werkzeug.wrappers import Response

from backend.errors import ConfigError
from backend.settings import EnvSettings, Settings, setting

log = logging.getLogger(__name__)

DEFAULT_LIMITS = "5 per minute; 20 per hour; 100 per day"
DEVICE_COOKIE = "fifoq_device"
DEVICE_DAYS = 30
MAX_NAME = 256  # what is hashed of a typed user name
MAX_ADDRESS = 128


class ThrottleConfig(EnvSettings):
    """How failed logins are throttled: the ladder of limits and where the counts live."""

    limits: str = setting("ADMIN_LOGIN_LIMITS", DEFAULT_LIMITS)
    # Any storage URI of the `limits` library; empty: the ledger's MongoDB when MONGODB_URL is a
    # server, memory:// otherwise (see storage_uri).
    storage: str = setting("ADMIN_LOGIN_STORAGE", "")

    @field_validator("limits")
    @classmethod
    def _limits(cls, value: str) -> str:
        try:
            items = parse_many(value)
        except ValueError:
            items = []
        if not items or any(item.amount < 1 for item in items):
            raise ValueError(f"expected limits such as {DEFAULT_LIMITS!r}")
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if value and (scheme not in SCHEMES or "://" not in value):
            raise ValueError(f"{scheme or value!r} is not a storage of the limits library "
                             f"({', '.join(sorted(SCHEMES))})")
        return value

    def storage_uri(self, settings: Settings) -> str:
        """ADMIN_LOGIN_STORAGE, or else the ledger's MongoDB server, or else memory://."""
        if self.storage:
            return self.storage
        return settings.mongodb_url if settings.mongodb_url.startswith(("mongodb://", "mongodb+srv://")) \
            else "memory://"

    def storage_options(self, settings: Settings) -> dict[str, Any]:
        """On MongoDB: the ledger's database, collections login_limits and login_limit_windows."""
        if not self.storage_uri(settings).startswith("mongodb"):
            return {}
        return {"database_name": settings.mongodb_db, "counter_collection_name": "login_limits",
                "window_collection_name": "login_limit_windows"}


def _digest(text: str) -> str:
    # A digest, not the name: what people type as a user name is sometimes their password.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def typed_name() -> str:
    return str(request.form.get("username", ""))[:MAX_NAME].strip().lower()


def _devices() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="fifoq-login-device")  # type: ignore[arg-type]


def trusted_device(name: str) -> str | None:
    """The id of this browser's device cookie when it was issued for `name` (lower case)."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return None
    try:
        data = _devices().loads(raw, max_age=DEVICE_DAYS * 86400)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("u") != _digest(name) or not isinstance(data.get("d"), str):
        return None
    return data["d"]


def remember_device(response: Response, name: str) -> None:
    """After a successful login: mark this browser as a trusted device of the user."""
    token = _devices().dumps({"u": _digest(name.lower()), "d": secrets.token_hex(16)})
    response.set_cookie(DEVICE_COOKIE, token, max_age=DEVICE_DAYS * 86400, path="/login", httponly=True,
                        samesite="Lax", secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")))


def login_key() -> str:
    """What failed logins are counted by: the user name typed, and the trusted device or else
    the client address."""
    name = typed_name()
    device = trusted_device(name)
    where = f"device:{device}" if device else f"addr:{str(request.remote_addr or 'unknown')[:MAX_ADDRESS]}"
    return f"user:{_digest(name)}|{where}"


def _failed(response: Response) -> bool:
    return response.status_code == 401


def init_app(app: Flask, env: Mapping[str, str], settings: Settings,
             on_throttled: Callable[[str, int], None]) -> Limiter:
    """Throttle POST /login (the view auth.login) of this app.

    Args:
        on_throttled: called with (typed user name, seconds to wait) once per refused attempt
            (the audit entry and the log line), before the login page answers 429.
    """
    cfg = ThrottleConfig.from_env(env)
    try:
        limiter = Limiter(login_key, app=app, storage_uri=cfg.storage_uri(settings),
                          storage_options=cfg.storage_options(settings),
                          strategy="moving-window", key_prefix="fifoq-login", headers_enabled=False,
                          # a storage outage must not turn logins into 500s: logged, not throttled
                          swallow_errors=True)
    except ConfigurationError as exc:
        raise ConfigError(f"ADMIN_LOGIN_STORAGE: {exc}") from None
    app.extensions["fifoq_login_throttle"] = cfg
    app.extensions["fifoq_login_limiter"] = limiter

    def breached(limit: RequestLimit) -> None:
        # Called for each rung of the ladder this attempt breaches: the longest wait wins.
        g.login_wait = max(g.get("login_wait", 0), max(1, int(limit.reset_at - time.time()) + 1))

    @app.errorhandler(RateLimitExceeded)
    def throttled(exc: RateLimitExceeded) -> Any:
        wait = int(g.get("login_wait", 1))
        on_throttled(typed_name(), wait)
        flash(f"Too many failed logins: try again in {wait} seconds.", "error")
        resp = make_response(render_template("login.html", username=request.form.get("username", "")), 429)
        resp.headers["Retry-After"] = str(wait)
        return resp

    view = app.view_functions["auth.login"]
    limited: Any = limiter.limit(cfg.limits, methods=["POST"], deduct_when=_failed, on_breach=breached)(view)
    app.view_functions["auth.login"] = limited  # Flask-Limiter's wrapper keeps the view's signature
    return limiter
