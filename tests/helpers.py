"""Test helpers (not fixtures: those are in conftest.py): recording handlers, waiting for
conditions without timing assertions, the console's test app and its logins."""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from admin import create_app
from admin.rabbitmq_api import RabbitAPI
from backend.app import Backend
from backend.values import Message
from connectors.registry import Registry
from connectors.runtime import Runtime

PASSWORD = "correct horse battery"  # of the users fixture's ada (admin), otto (operator), vera (viewer)
CLOSED_PORT_URL = "http://127.0.0.1:9"  # nothing listens on the discard port
PAYMENT_SCHEMA = {
    "type": "object",
    "required": ["amount", "customer"],
    "properties": {
        "amount": {"type": "number"},
        "customer": {"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}},
        "note": {"type": "string"},
    },
}
XSS = "<script>alert('pwned')</script><b>bold</b>"


class Recorder:
    """A handler that records every call; optionally fails on chosen payloads."""

    def __init__(self, fail_when: Callable[[Message], bool] | None = None) -> None:
        self.calls: list[Message] = []
        self.lock = threading.Lock()
        self.fail_when = fail_when

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.calls.append(message)
        if self.fail_when is not None and self.fail_when(message):
            raise ValueError(f"cannot handle {message.payload!r}")

    def payloads(self) -> list:
        with self.lock:
            return [m.payload for m in self.calls]

    def seqs(self) -> list[int]:
        with self.lock:
            return [m.seq for m in self.calls]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> None:
    """Poll until condition() is true; fail the test with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def emit_around_a_gap(backend, actor: str = "payment", event: str = "x") -> None:
    """Emit {"i": 0} and {"i": 2} to `actor` with sequence number 2 allocated but never stored
    between them (an emitter that died between allocation and insert)."""
    backend.subscriptions.subscribe(actor, event)
    backend.declare()
    backend.emit_event(event, {"i": 0})
    backend.ledger.allocate(actor, 1)
    backend.emit_event(event, {"i": 2})


def make_app(backend: Backend, *, csrf: bool = False, mgmt: RabbitAPI | None = None, **extra: Any) -> Flask:
    """The console over `backend` in testing mode (CSRF off unless asked for)."""
    config: dict[str, Any] = {"ADMIN_ENV": "testing", "WTF_CSRF_ENABLED": csrf}
    config.update(extra)
    return create_app(backend, config=config, mgmt=mgmt)


def csrf_token_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: FlaskClient, name: str, password: str = PASSWORD) -> Any:
    """Log `client` in through the login form (with its CSRF token); returns the answer."""
    page = client.get("/login")
    token = csrf_token_from(page.get_data(as_text=True))
    return client.post("/login", data={"username": name, "password": password, "csrf_token": token})


@dataclass
class Blocked:
    """payment is blocked on `failed_id` (seq 2); `done_id` succeeded, `waiting_ids` wait behind."""

    actor: str
    done_id: str
    failed_id: str
    waiting_ids: list[str]
    recorder: Recorder

    def run(self, backend: Backend) -> None:
        reg = Registry()
        reg.register(self.actor, self.recorder)
        Runtime(backend.settings, backend.ledger, reg).run(drain=True, timeout=60)


def fails_on_negative(message: Message) -> bool:
    return bool(message.payload.get("amount", 0) < 0)


def set_json_editor(page, scope: str, text: str) -> None:
    """Replace the content of the console's JSON editor (CodeMirror, admin/static/editor.js) inside
    `scope` as an operator would: select all, then paste (no auto-closed brackets on the way)."""
    page.click(f"{scope} .cm-content")
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(text)
