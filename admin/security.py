"""Console hardening around authentication: login throttling and guards on request bodies.

- Login throttling: after ADMIN_LOGIN_MAX_FAILURES failed logins (default 5) within
  ADMIN_LOGIN_WINDOW_SECONDS (default 300) for one user name, or from one client address, the
  login form answers 429 with Retry-After without checking the password. Failures are kept in the
  store (`login_failures`), so every console process shares them. A successful login clears its
  user name's failures (not its address's).
- Request bodies: MAX_CONTENT_LENGTH follows FIFOQ_MAX_PAYLOAD_BYTES (see body_limit); larger
  bodies get a clear 413. JSON nested past what the parser can handle, or holding lone surrogates
  that no store can keep, is a 400, not a crash.

Behind a reverse proxy every client has the proxy's address: configure the proxy to pass the
client address and wrap the app in werkzeug's ProxyFix, or rely on the per-user limit only.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from backend.errors import ValidationError
from backend.ledger import as_aware, utcnow
from backend.settings import EnvSettings, setting
from backend.store import ASCENDING, Store

log = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 5
DEFAULT_WINDOW_SECONDS = 300
MAX_KEY = 128  # bound what we store about a client address
BODY_OVERHEAD = 64 * 1024
BODY_FACTOR = 4  # JSON escapes (\uXXXX) and form encoding (%XX) make a body larger than its payload
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def body_limit(max_payload_bytes: int) -> int:
    """The largest request body the console reads: room for one maximal payload, escaped."""
    return BODY_FACTOR * max_payload_bytes + BODY_OVERHEAD


class ThrottleConfig(EnvSettings):
    max_failures: int = setting("ADMIN_LOGIN_MAX_FAILURES", DEFAULT_MAX_FAILURES, ge=1, le=1000)
    window_seconds: int = setting("ADMIN_LOGIN_WINDOW_SECONDS", DEFAULT_WINDOW_SECONDS, ge=1, le=7 * 86400)


class LoginThrottle:
    """Failed logins per user name and per client address, one document per failure."""

    def __init__(self, store: Store, config: ThrottleConfig) -> None:
        self.store = store
        self.config = config
        with store.op() as db:
            db.login_failures.create_index([("key", ASCENDING), ("at", ASCENDING)], name="key_at")
            # On MongoDB old failures expire by themselves; the embedded store is pruned in failed().
            db.login_failures.create_index([("at", ASCENDING)], name="expire",
                                           expireAfterSeconds=config.window_seconds)

    @staticmethod
    def keys(name: str, address: str | None) -> list[str]:
        # A digest, not the name: what people type as a user name is sometimes their password.
        digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return [f"user:{digest}", f"addr:{str(address or 'unknown')[:MAX_KEY]}"]

    def retry_after(self, name: str, address: str | None) -> int:
        """Seconds to wait before this user name or address may try again; 0 when it may now."""
        now = utcnow()
        since = now - timedelta(seconds=self.config.window_seconds)
        wait = 0.0
        with self.store.op() as db:
            for key in self.keys(name, address):
                times = [as_aware(d["at"]) for d in db.login_failures.find({"key": key, "at": {"$gt": since}}, {"at": 1})
                         .sort("at", ASCENDING)]
                excess = len(times) - self.config.max_failures
                if excess >= 0:
                    # Allowed again once enough of the oldest failures left the window.
                    frees_at = times[excess] + timedelta(seconds=self.config.window_seconds)
                    wait = max(wait, (frees_at - now).total_seconds())
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, name: str, address: str | None) -> None:
        now = utcnow()
        docs = [{"_id": uuid.uuid4().hex, "key": key, "at": now} for key in self.keys(name, address)]
        with self.store.op() as db:
            db.login_failures.insert_many(docs)
            db.login_failures.delete_many({"at": {"$lt": now - timedelta(seconds=self.config.window_seconds)}})

    def succeeded(self, name: str) -> None:
        with self.store.op() as db:
            db.login_failures.delete_many({"key": self.keys(name, None)[0]})


def throttle() -> LoginThrottle:
    return current_app.extensions["fifoq_login_throttle"]


def init_app(app: Flask, env: Mapping[str, str], store: Store) -> None:
    """Register the throttle (users' store), the 413 answer and the JSON body guard."""
    app.extensions["fifoq_login_throttle"] = LoginThrottle(store, ThrottleConfig.from_env(env))
    app.before_request(_guard_json_body)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Any:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        message = (f"request body too large: the limit is {limit} bytes "
                   "(FIFOQ_MAX_PAYLOAD_BYTES sets it; payloads are limited separately)")
        if request.path.startswith("/api/"):
            return jsonify(error=message, type="PayloadTooLarge", details=[]), 413
        from flask import render_template

        return render_template("error.html", title="Request too large", message=message, details=[],
                               status=413), 413


def _guard_json_body() -> None:
    """Parse JSON bodies sent to the API once, here: Python's parser raises RecursionError (not
    ValueError) on very deep nesting, which would otherwise surface as a 500. The parsed body is
    cached by Flask, so the view does not parse it again."""
    if request.method not in UNSAFE_METHODS or not request.path.startswith("/api/"):
        return None
    if not request.get_data(cache=True):
        return None
    try:
        data = request.get_json(silent=True, force=True)
    except RecursionError:
        raise ValidationError("the request body is nested too deeply") from None
    if not _valid_unicode(data):
        # JSON may carry lone surrogates ("\ud800", or CESU-8 bytes the parser lets through):
        # no store can keep them (BSON strings are UTF-8), so refuse them here.
        raise ValidationError("the request body contains invalid Unicode (a lone surrogate)")
    return None


def _valid_unicode(value: Any) -> bool:
    stack = [value]
    while stack:  # iterative: the body may be nested as deep as the parser allowed
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
