"""The admin console: a Flask app operators use remotely to watch and repair actor queues.

It reads the ledger (never the broker's queues), acts through backend.operations (which write the
audit log) and asks RabbitMQ for queue depths and cluster health through its management HTTP API
(admin.rabbitmq_api, the only module that calls it).

    app = create_app()            # settings from the environment
    app = create_app(backend, config={"ADMIN_ENV": "testing"}, mgmt=RabbitAPI(...))
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from admin import auth, security, throttle, timefmt
from admin.config import AdminConfig
from admin.correlation import CorrelationMiddleware
from admin.rabbitmq_api import RabbitAPI
from admin.users import UserStore
from backend.app import Backend
from backend.errors import FifoqError, StoreError
from backend.ledger import as_aware, utcnow
from backend.settings import Settings
from backend.store import Store

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(backend: Backend | None = None, *, config: dict[str, Any] | None = None,
               mgmt: RabbitAPI | None = None) -> Flask:
    """Build the console.

    Args:
        backend: the core library's wiring; built from the environment when None.
        config: Flask settings to override, and ADMIN_* settings taking precedence over the
            environment (ADMIN_ENV, ADMIN_SECRET_KEY, ADMIN_SESSION_MINUTES...).
        mgmt: the management API client; built from the backend's settings when None.
    Raises:
        ConfigError: a setting is missing or invalid (the message names it).
    """
    config = dict(config or {})
    env = dict(os.environ)
    env.update({k: str(v) for k, v in config.items() if k.startswith("ADMIN_")})
    if config.get("SECRET_KEY") and not env.get("ADMIN_SECRET_KEY"):
        env["ADMIN_SECRET_KEY"] = str(config["SECRET_KEY"])
    admin_cfg = AdminConfig.from_env(env)

    app = Flask(__name__)
    # A name holding "/" (%2F, decoded before routing) is not redirected to another resource
    # by merging the slashes: it matches no route (404), whatever the method.
    app.url_map.merge_slashes = False
    app.wsgi_app = CorrelationMiddleware(app.wsgi_app)  # type: ignore[method-assign,assignment]  # as Flask's docs do
    app.config.update(
        SECRET_KEY=admin_cfg.secret_key,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=admin_cfg.session_minutes),
        SESSION_REFRESH_EACH_REQUEST=True,
        SESSION_COOKIE_NAME="fifoq_admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not admin_cfg.development,
        JSON_SORT_KEYS=False,
        TESTING=admin_cfg.env == "testing",
    )
    app.config.update({k: v for k, v in config.items() if not k.startswith("ADMIN_")})
    app.config["ADMIN"] = admin_cfg

    backend = backend or Backend(Settings.from_env())
    app.extensions["fifoq"] = backend
    app.extensions["fifoq_users"] = UserStore(_user_store(backend))
    app.extensions["fifoq_mgmt"] = mgmt or RabbitAPI.from_settings(backend.settings)

    if "MAX_CONTENT_LENGTH" not in config:
        app.config["MAX_CONTENT_LENGTH"] = security.body_limit(backend.settings.max_payload_bytes)
    auth.init_app(app)
    throttle.init_app(app, env, backend.settings, auth.login_throttled)
    security.init_app(app)
    from admin import api, views  # here: the blueprints need the app's extensions at request time only

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp, url_prefix="/api")
    from admin import metrics  # /metrics, /api/alerts, /api/charts

    metrics.init_app(app, env)
    from admin import releases, repair_api, repair_views, trace

    releases.init_app(app, env, app.extensions["fifoq_users"].store)
    app.register_blueprint(repair_views.bp)
    app.register_blueprint(repair_api.bp, url_prefix="/api")
    app.register_blueprint(trace.bp)
    _register_filters(app)
    _register_errors(app)
    app.after_request(_security_headers)
    log.info("admin console ready (env=%s, prefix=%s, broker API %s)", admin_cfg.env, backend.settings.prefix,
             app.extensions["fifoq_mgmt"].display_url)
    return app


def _user_store(backend: Backend) -> Store:
    """Users live in the ledger's database. A backend that reaches an embedded ledger served by
    another process (MONGODB_URL=embedded://, development only) has no database of its own: the
    console then keeps its users in memory, and they last as long as the console's process."""
    if backend.store is not None:
        return backend.store
    log.warning("MONGODB_URL=embedded://...: console users are kept in this process only "
                "(use ADMIN_BOOTSTRAP_USER/ADMIN_BOOTSTRAP_PASSWORD, or MongoDB for lasting users)")
    return Store.open(backend.settings.with_(mongodb_url=f"mongomock://fifoq-admin-users-{backend.settings.prefix}"))


def _security_headers(resp: Any) -> Any:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _register_errors(app: Flask) -> None:
    def wants_json() -> bool:
        return auth.is_api_request()

    @app.errorhandler(FifoqError)
    def fifoq_error(exc: FifoqError) -> Any:
        status = getattr(exc, "http_status", 500)
        if status >= 500:
            log.warning("%s %s failed: %s: %s", request.method, request.path, type(exc).__name__, exc)
        details = getattr(exc, "details", None) or []
        if wants_json():
            return jsonify(error=str(exc), type=type(exc).__name__, details=details), status
        title = "Ledger unreachable" if isinstance(exc, StoreError) else type(exc).__name__
        return render_template("error.html", title=title, message=str(exc), details=details, status=status), status

    @app.errorhandler(ConnectionError)
    @app.errorhandler(EOFError)
    def ledger_link_error(exc: Exception) -> Any:
        # An embedded ledger served by another process (development) went away mid-call.
        return fifoq_error(StoreError(f"ledger unavailable: {type(exc).__name__}: {exc}"))

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError) -> Any:
        message = f"CSRF check failed: {exc.description}"
        if wants_json():
            return jsonify(error=message, details=[]), 400
        return render_template("error.html", title="Request refused", message=message + " Reload the page and try again.",
                               details=[], status=400), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if wants_json():
            return jsonify(error=exc.description or exc.name, details=[]), exc.code or 500
        return render_template("error.html", title=exc.name, message=exc.description, details=[],
                               status=exc.code), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return jsonify(error="internal error (see the console's log)", details=[]), 500
        return render_template("error.html", title="Internal error", message="See the console's log.", details=[],
                               status=500), 500


def _register_filters(app: Flask) -> None:
    timefmt.init_app(app)

    @app.template_filter("age")
    def age(value: Any) -> str:
        """How long ago (a datetime) or how long (seconds), as a duration: `5 min 3 s`."""
        if value is None or isinstance(value, (int, float)):
            return timefmt.duration(value)
        return timefmt.duration((utcnow() - as_aware(value)).total_seconds())

    @app.template_filter("num")
    def num(value: Any) -> str:
        return "?" if value is None else str(value)

    @app.template_filter("rate")
    def rate(value: Any) -> str:
        return "?" if value is None else f"{value:.1f}/s"

    @app.template_filter("compactjson")
    def compactjson(value: Any) -> str:
        # A plain str: autoescape turns any markup inside a payload into text.
        return timefmt.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)

    @app.template_filter("prettyjson")
    def prettyjson(value: Any) -> str:
        from admin.params import pretty_json

        return pretty_json(value)
