"""Shared fixtures (flaskr style: tests use them by name, never import them).

- every test gets its own queue prefix on the real broker and its own database: `prefix`,
  `settings`, `backend`;
- the console: `users` (ada/admin, otto/operator, vera/viewer, password helpers.PASSWORD), `app`,
  `csrf_app`, `client`, logged-in clients `admin_client`, `operator`, `viewer`, `auth` (log a
  client in as anyone), `broker_down_app`, and `blocked`: payment blocked through the real pipeline;
- a real console server and browser: `console_url`, `browser_page`;
- command lines: `run_cli`, which runs a CLI's main() in-process and returns its exit code and
  output (click's CliRunner isolation); tests that check a process's exit code and stderr
  start a real subprocess instead.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from admin.rabbitmq_api import RabbitAPI
from admin.users import UserStore
from backend import logs
from backend.app import Backend
from backend.settings import Settings
from backend.store import Store
from tests.helpers import CLOSED_PORT_URL, PASSWORD, PAYMENT_SCHEMA, XSS, Blocked, Recorder, fails_on_negative, login, make_app

pytest_plugins = ["tests.failure_fixtures"]  # the failures board's incident fixture

API_URL = os.environ.get("RABBITMQ_API_URL", "http://127.0.0.1:15672").rstrip("/")
API_AUTH = (os.environ.get("RABBITMQ_API_USER", "guest"), os.environ.get("RABBITMQ_API_PASSWORD", "guest"))


def delete_prefixed(prefix: str, api_url: str = API_URL, auth: tuple[str, str] = API_AUTH) -> None:
    """Remove every queue and exchange a test created (names start with its prefix)."""
    for kind in ("queues", "exchanges"):
        resp = requests.get(f"{api_url}/api/{kind}", auth=auth, timeout=10, params={"columns": "name,vhost"})
        resp.raise_for_status()
        for item in resp.json():
            if item["name"].startswith(prefix + "."):
                vhost = requests.utils.quote(item["vhost"], safe="")
                name = requests.utils.quote(item["name"], safe="")
                requests.delete(f"{api_url}/api/{kind}/{vhost}/{name}", auth=auth, timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _broker_reachable() -> None:
    """The real broker is required: a missing broker is a failure, never a skip."""
    try:
        requests.get(f"{API_URL}/api/overview", auth=API_AUTH, timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"RabbitMQ management API not reachable at {API_URL} ({exc}); run `make broker`", pytrace=False)


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


# The ledger backends a test module runs on when it sets LEDGER_FLAVORS = ALL_FLAVORS: the
# embedded store, mongomock behind the MongoDB code path (its own unique indexes and pymongo's
# error classes, no embedded shortcuts), and a real MongoDB when MONGODB_TEST_URL is set (e.g.
# the compose replica set's primary, its port published: see docs/operations.md).
MONGODB_TEST_URL = os.environ.get("MONGODB_TEST_URL", "").strip()
ALL_FLAVORS = ("embedded", "mongodb-path") + (("mongodb",) if MONGODB_TEST_URL else ())


def ledger_url(flavor: str, prefix: str) -> str:
    return {"embedded": f"mongomock://{prefix}", "mongodb-path": f"mongomock+mongodb://{prefix}",
            "mongodb": MONGODB_TEST_URL}[flavor]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    flavors = getattr(metafunc.module, "LEDGER_FLAVORS", None)
    if flavors and "ledger_flavor" in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("embedded_only"):
            flavors = ("embedded",)  # large volumes: mongomock's own unique index scans every document
        metafunc.parametrize("ledger_flavor", flavors)


@pytest.fixture
def ledger_flavor() -> str:
    return "embedded"


@pytest.fixture
def settings(prefix: str, ledger_flavor: str) -> Iterator[Settings]:
    base = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith(("AMQP_", "RABBITMQ_"))})
    s = base.with_(
        prefix=prefix,
        mongodb_url=ledger_url(ledger_flavor, prefix),
        mongodb_db=f"db_{prefix}",
        poll_interval=0.1,
        idle_poll=0.5,
        confirm_timeout=5.0,
        transient_backoff=0.05,
        gap_grace=2.0,
        relay_min_age=0.0,
        claim_lease=3.0,
    )
    yield s
    Store.open(s).drop()
    delete_prefixed(prefix)


@pytest.fixture
def backend(settings: Settings) -> Iterator[Backend]:
    be = Backend(settings)
    yield be
    be.close()


@pytest.fixture(autouse=True)
def _quiet_pika() -> None:
    logging.getLogger("pika").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _no_correlation_id() -> Iterator[None]:
    """Each test starts outside any request: Flask's test client leaves a response it did not
    close unclosed, and with it the request's correlation id bound (admin.correlation unbinds when
    the server closes the answer), which later tests of this thread would log."""
    token = logs.bind(None)
    yield
    logs.unbind(token)


# -- the console ----------------------------------------------------------------------------------
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


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client of `app`, not logged in."""
    return app.test_client()


class AuthActions:
    """Log clients of `app` in (flaskr's `auth` fixture)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def client(self, name: str, password: str = PASSWORD) -> FlaskClient:
        client = self.app.test_client()
        resp = login(client, name, password)
        assert resp.status_code == 302, resp.get_data(as_text=True)
        return client


@pytest.fixture
def auth(app: Flask) -> AuthActions:
    return AuthActions(app)


@pytest.fixture
def admin_client(auth: AuthActions) -> FlaskClient:
    return auth.client("ada")


@pytest.fixture
def operator(auth: AuthActions) -> FlaskClient:
    return auth.client("otto")


@pytest.fixture
def viewer(auth: AuthActions) -> FlaskClient:
    return auth.client("vera")


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
def broker_down_app(backend: Backend, users: UserStore) -> Flask:
    s = backend.settings
    return make_app(backend, mgmt=RabbitAPI(CLOSED_PORT_URL, s.api_user, s.api_password, timeout=2))


# -- a real console server and browser --------------------------------------------------------------
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


@pytest.fixture
def console_url(backend: Backend, users: UserStore) -> Iterator[str]:
    """The console (with CSRF) served by a real HTTP server on a free port."""
    from werkzeug.serving import make_server

    from admin.server import start_background

    app = make_app(backend, csrf=True)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="admin-console", daemon=True)
    thread.start()
    jobs = start_background(app)  # the staged-release driver, as `fifoq admin serve` runs it
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        jobs.set()
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page of headless Chromium (Debian's, driven by Playwright); page.csp_errors lists CSP reports."""
    from playwright import sync_api as playwright_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium (make test does)", pytrace=False)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.csp_errors = []
        page.on("console", lambda msg: "Content Security Policy" in msg.text and page.csp_errors.append(msg.text))
        try:
            yield page
        finally:
            browser.close()


# -- command lines --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """run_cli(main, [args...], input="...") runs a command line's main() in this process with
    stdin, stdout and stderr swapped (click's CliRunner isolation)."""

    def run(main: Callable[[Sequence[str]], int], args: Sequence[str], input: str | None = None) -> CliResult:
        runner = CliRunner()
        with runner.isolation(input=input) as (out, err, _):
            code = main(list(args))
        return CliResult(code, out.getvalue().decode(), err.getvalue().decode())

    return run
