"""Console hardening: guards on request bodies (login throttling is admin.throttle).

- Request bodies: MAX_CONTENT_LENGTH follows FIFOQ_MAX_PAYLOAD_BYTES (see body_limit); larger
  bodies get a clear 413. JSON nested past what the parser can handle, or holding lone surrogates
  that no store can keep, is a 400, not a crash.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from backend.errors import ValidationError

log = logging.getLogger(__name__)

BODY_OVERHEAD = 64 * 1024
BODY_FACTOR = 4  # JSON escapes (\uXXXX) and form encoding (%XX) make a body larger than its payload
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def body_limit(max_payload_bytes: int) -> int:
    """The largest request body the console reads: room for one maximal payload, escaped."""
    return BODY_FACTOR * max_payload_bytes + BODY_OVERHEAD


def init_app(app: Flask) -> None:
    """Register the 413 answer and the JSON body guard."""
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
