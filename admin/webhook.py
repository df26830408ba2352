"""One webhook delivery: a JSON POST signed with an HMAC, and how a receiver checks it.

Each request carries:

    Content-Type: application/json
    X-Fifoq-Event: blocked | unblocked
    X-Fifoq-Delivery: <the notification's id, the same on every retry: deduplicate on it>
    X-Fifoq-Signature: t=<Unix time of this attempt>,v1=<hex HMAC-SHA256>

where v1 = HMAC-SHA256(secret, "<t>." + raw request body), lowercase hex. A receiver recomputes it
over the raw body it received (before any JSON parsing), compares in constant time, and refuses a
`t` more than 5 minutes away from its clock, so that a captured request cannot be replayed later:
verify_signature() does exactly that. Every retry is signed again with its own `t`.

A delivery succeeds on any 2xx answer; anything else (another status, a redirect, a timeout, a
refused connection) is a failure the notifier retries later (admin.notifier).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests

from admin import timefmt
from admin.notify_settings import Target

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Fifoq-Signature"
EVENT_HEADER = "X-Fifoq-Event"
DELIVERY_HEADER = "X-Fifoq-Delivery"
TOLERANCE_SECONDS = 300
USER_AGENT = "fifoq-notifier/1"


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (times as ISO 8601 UTC with Z)."""
    return json.dumps(payload, default=timefmt.json_default, separators=(",", ":"), sort_keys=True).encode("utf-8")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Fifoq-Signature header value: `t=<timestamp>,v1=<hex>`."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str | None, body: bytes, *, tolerance: int = TOLERANCE_SECONDS,
                     now: float | None = None) -> bool:
    """A receiver's check: True when `header` signs `body` with `secret` and its time is within
    `tolerance` seconds of now."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields.get("t", [""])[0])
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def session() -> requests.Session:
    """One HTTP session for a notifier's deliveries (connections kept alive between them)."""
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str  # "HTTP 204", "HTTP 500: <first bytes of the answer>", "ConnectionError: ..."


def deliver(target: Target, event: str, delivery_id: str, body: bytes, timeout: float,
            session: requests.Session | None = None) -> Outcome:
    """POST one notification; never raises for the receiver's failures (they are the Outcome)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: sign(target.secret, body, timestamp),
    }
    try:
        resp = (session or requests).post(target.url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}")
    if 200 <= resp.status_code < 300:
        return Outcome(True, f"HTTP {resp.status_code}")
    snippet = resp.text[:200].strip().replace("\n", " ")
    return Outcome(False, f"HTTP {resp.status_code}" + (f": {snippet}" if snippet else ""))
