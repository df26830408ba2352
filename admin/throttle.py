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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flask import Flask, current_app, flash, g, make_response, render_template, request
from flask.wrappers import Response
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse_many
from limits.errors import ConfigurationError
from limits.storage import SCHEMES

from backend.errors import ConfigError
from backend.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_LIMITS = "5 per minute; 20 per hour; 100 per day"
DEVICE_COOKIE = "fifoq_device"
DEVICE_DAYS = 30
MAX_NAME = 256  # what is hashed of a typed user name
MAX_ADDRESS = 128


@dataclass(frozen=True)
class ThrottleConfig:
    limits: str = DEFAULT_LIMITS
    storage_uri: str = "memory://"
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: Settings | None = None) -> "ThrottleConfig":
        """Raises ConfigError naming the variable."""
        limits = str(env.get("ADMIN_LOGIN_LIMITS", "")).strip() or DEFAULT_LIMITS
        try:
            items = parse_many(limits)
        except ValueError:
            items = []
        if not items or any(item.amount < 1 for item in items):
            raise ConfigError(f"ADMIN_LOGIN_LIMITS={limits!r}: expected limits such as {DEFAULT_LIMITS!r}")
        uri = str(env.get("ADMIN_LOGIN_STORAGE", "")).strip()
        options: dict[str, Any] = {}
        mongodb_url = settings.mongodb_url if settings is not None else ""
        if not uri:
            uri = mongodb_url if mongodb_url.startswith(("mongodb://", "mongodb+srv://")) else "memory://"
        scheme = uri.partition("://")[0]
        if scheme not in SCHEMES or "://" not in uri:
            raise ConfigError(f"ADMIN_LOGIN_STORAGE: {scheme or uri!r} is not a storage of the limits library "
                              f"({', '.join(sorted(SCHEMES))})")
        if scheme.startswith("mongodb"):
            options = {"database_name": settings.mongodb_db if settings is not None else "fifoq",
                       "counter_collection_name": "login_limits", "window_collection_name": "login_limit_windows"}
        return cls(limits=limits, storage_uri=uri, storage_options=options)


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
    cfg = ThrottleConfig.from_env(env, settings)
    try:
        limiter = Limiter(login_key, app=app, storage_uri=cfg.storage_uri, storage_options=cfg.storage_options,
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
    app.view_functions["auth.login"] = limiter.limit(cfg.limits, methods=["POST"], deduct_when=_failed,
                                                     on_breach=breached)(view)
    return limiter
