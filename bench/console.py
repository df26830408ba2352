"""5. Console response times with N actors (1,000 by default): overview page and JSON API."""
from __future__ import annotations

import time
import uuid
from typing import Any

from admin import create_app
from admin.rabbitmq_api import RabbitAPI
from admin.users import UserStore
from backend.app import Backend
from backend.values import ErrorInfo
from bench.common import Options, Table, bench_settings, median, percentile
from bench.queues import create_actors

PASSWORD = "bench password 123"
ENDPOINTS = ("/", "/api/overview", "/api/alerts", "/metrics", "/api/charts")
BLOCKED = 10


def console_client(backend: Backend, mgmt: RabbitAPI) -> Any:
    """A Flask test client of the console over `backend`, logged in as a viewer."""
    app = create_app(backend, config={"ADMIN_ENV": "testing", "WTF_CSRF_ENABLED": False,
                                      "ADMIN_SECRET_KEY": uuid.uuid4().hex * 2}, mgmt=mgmt)
    assert backend.store is not None  # the benchmark's own embedded database
    UserStore(backend.store).create("bench", PASSWORD, "viewer")
    client = app.test_client()
    client.post("/login", data={"username": "bench", "password": PASSWORD})
    return client


def timed(client: Any, path: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        resp = client.get(path)
        out.append(time.perf_counter() - started)
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status_code}")
    return out


def run(opts: Options) -> Table:
    n = opts.actors
    table = Table(f"5. Console with {n} actors ({BLOCKED} blocked, one message each), Flask test client, "
                  f"{opts.requests} requests per endpoint")
    with bench_settings("console", opts) as settings:
        backend = Backend(settings)
        try:
            create_actors(backend, n, "bench.console")
            ids = backend.emit_event("bench.console", {"hello": "world"})
            for mid in ids[:BLOCKED]:  # failed as a connector would fail them: the actor blocks
                held = backend.ledger.claim(backend.ledger.message(mid), "bench", 30)
                assert held is not None
                backend.ledger.settle(held, "bench", ErrorInfo("BenchError", "blocked for the benchmark"))
            mgmt = RabbitAPI.from_settings(settings)
            client = console_client(backend, mgmt)
            timed(client, "/", 1)  # warm-up: templates, first connections
            listing = []
            for _ in range(opts.requests):
                started = time.perf_counter()
                mgmt.queues(f"{settings.prefix}.actor.")
                listing.append(time.perf_counter() - started)
            for path in ENDPOINTS:
                t = timed(client, path, opts.requests)
                for label, p in (("p50", 50), ("p95", 95)):
                    base = percentile(listing, p) * 1000 if path != "/api/charts" else None
                    table.add(f"GET {path} {label} (ms)", percentile(t, p) * 1000, base,
                              "management API queue listing alone" if base is not None else "", "ms",
                              higher_is_better=False)
            table.notes.append(f"Baseline: the management API's paginated queue listing for the prefix "
                               f"(median {median(listing) * 1000:.0f} ms), which the overview, /api/alerts and "
                               "/metrics each need; there is no raw-pika equivalent of a console page. "
                               "/api/charts reads only the ledger.")
        finally:
            backend.close()
    return table
