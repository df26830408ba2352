"""Fixtures for the admin console tests: an app over the per-test `backend`, users of each role,
logged-in clients, and an actor blocked through the real pipeline (emit -> broker -> runtime)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin import create_app
from admin.rabbitmq_api import RabbitAPI
from admin.users import UserStore
from backend.app import Backend
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.helpers import Recorder

PASSWORD = "correct horse battery"
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


def make_app(backend: Backend, *, csrf: bool = False, mgmt: RabbitAPI | None = None, **extra: Any) -> Flask:
    config: dict[str, Any] = {"ADMIN_ENV": "testing", "WTF_CSRF_ENABLED": csrf}
    config.update(extra)
    return create_app(backend, config=config, mgmt=mgmt)


def csrf_token_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: FlaskClient, name: str, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    token = csrf_token_from(page.get_data(as_text=True))
    return client.post("/login", data={"username": name, "password": password, "csrf_token": token})


@pytest.fixture
def users(backend: Backend) -> UserStore:
    store = UserStore(backend.store)
    for name, role in (("ada", "admin"), ("otto", "operator"), ("vera", "viewer")):
        store.create(name, PASSWORD, role)
    return store


@pytest.fixture
def app(backend: Backend, users: UserStore) -> Flask:
    return make_app(backend)


@pytest.fixture
def csrf_app(backend: Backend, users: UserStore) -> Flask:
    return make_app(backend, csrf=True)


def _client(app: Flask, name: str) -> FlaskClient:
    client = app.test_client()
    resp = login(client, name)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


@pytest.fixture
def admin_client(app: Flask) -> FlaskClient:
    return _client(app, "ada")


@pytest.fixture
def operator(app: Flask) -> FlaskClient:
    return _client(app, "otto")


@pytest.fixture
def viewer(app: Flask) -> FlaskClient:
    return _client(app, "vera")


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


def fails_on_negative(message: Any) -> bool:
    return message.payload.get("amount", 0) < 0


@pytest.fixture
def blocked(backend: Backend) -> Blocked:
    """Given payment (with a schema) and shipping subscribed to tour.booked, when the second event
    has a negative amount, the payment handler fails on it and payment blocks."""
    backend.subscriptions.actor("payment", schema=PAYMENT_SCHEMA, description="charges the customer")
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.subscriptions.subscribe("shipping", "tour.booked")
    backend.declare()
    customer = {"email": "a@example.com"}
    done = backend.emit_event("tour.booked", {"amount": 10, "customer": customer})
    failed = backend.emit_event("tour.booked", {"amount": -1, "customer": customer, "note": XSS})
    waiting = [backend.emit_event("tour.booked", {"amount": 20 + i, "customer": customer}) for i in range(3)]
    backend.emitter.flush()  # publish confirms are recorded off emit's path: settle them before snapshots

    def pick(ids: list[str]) -> str:
        return next(i for i in ids if backend.ledger.message(i)["actor"] == "payment")

    state = Blocked("payment", pick(done), pick(failed), [pick(w) for w in waiting], Recorder(fails_on_negative))
    state.run(backend)
    assert backend.ledger.actor("payment")["blocked"]["message_id"] == state.failed_id
    return state


@pytest.fixture
def broker_down_app(backend: Backend, users: UserStore) -> Iterator[Flask]:
    s = backend.settings
    yield make_app(backend, mgmt=RabbitAPI(CLOSED_PORT_URL, s.api_user, s.api_password, timeout=2))
