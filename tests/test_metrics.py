"""Metrics, alerts and charts: Prometheus counters from emit and the runtime, the connector's
/metrics endpoint as a real process, the console's /metrics, /api/alerts and /api/charts."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from admin.alerts import AlertRules, Rule, evaluate
from admin.users import UserStore
from backend.app import Backend
from backend.errors import ConfigError
from backend.metrics import PipelineMetrics, instrument_emitter
from backend.settings import Settings
from connectors.metrics import WorkerCollector, serve
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.helpers import Blocked, Recorder, login, make_app, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the message path: emit and the runtime ------------------------------------------------------
def test_pipeline_metrics_count_emitted_processed_failed_and_latency(backend: Backend) -> None:
    """Given payment and shipping subscribed to tour.booked and an instrumented emitter, when three
    events are emitted and the second fails for payment, the counters say so per actor."""
    metrics = PipelineMetrics()
    instrument_emitter(backend.emitter, metrics)
    instrument_emitter(backend.emitter, metrics)  # idempotent: counted once
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.subscriptions.subscribe("shipping", "tour.booked")
    backend.declare()
    for amount in (1, -1, 2):
        backend.emit_event("tour.booked", {"amount": amount})
    backend.emit_many([("tour.booked", {"amount": 3})] * 2)
    reg = Registry()
    reg.register("payment", Recorder(lambda m: m.payload["amount"] < 0))
    reg.register("shipping", Recorder())
    Runtime(backend.settings, backend.ledger, reg, on_event=metrics.on_event).run(drain=True, timeout=60)

    get = metrics.registry.get_sample_value
    assert get("fifoq_messages_emitted_total", {"actor": "payment"}) == 5
    assert get("fifoq_messages_emitted_total", {"actor": "shipping"}) == 5
    assert get("fifoq_messages_processed_total", {"actor": "shipping"}) == 5
    assert get("fifoq_messages_processed_total", {"actor": "payment"}) == 1
    assert get("fifoq_messages_failed_total", {"actor": "payment"}) == 1
    assert get("fifoq_handler_seconds_count", {"actor": "payment"}) == 2
    assert get("fifoq_handler_seconds_count", {"actor": "shipping"}) == 5


def test_pipeline_metrics_registries_are_isolated() -> None:
    a, b = PipelineMetrics(), PipelineMetrics(CollectorRegistry())
    a.on_event("done", "x", {"_id": "m1", "seq": 1, "correlation_id": "c1"}, 0.01)
    assert a.registry.get_sample_value("fifoq_messages_processed_total", {"actor": "x"}) == 1
    assert b.registry.get_sample_value("fifoq_messages_processed_total", {"actor": "x"}) is None


def test_pipeline_metrics_hook_logs_correlation_id_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    metrics = PipelineMetrics()
    with caplog.at_level("INFO", logger="backend.metrics"):
        metrics.on_event("failed", "payment", {"_id": "m1", "seq": 7, "correlation_id": "order-42"}, 0.2)
        metrics.on_event("done", "payment", {}, float("nan"))  # a bad document must not raise
    line = next(r.getMessage() for r in caplog.records if "failed" in r.getMessage())
    assert "actor=payment" in line and "message=m1" in line and "correlation=order-42" in line


def test_connector_metrics_server_reports_consuming_workers(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.declare()
    backend.emit_event("tour.booked", {"amount": 1})
    metrics = PipelineMetrics()
    reg = Registry()
    reg.register("payment", Recorder())
    runtime = Runtime(backend.settings, backend.ledger, reg, on_event=metrics.on_event)
    metrics.registry.register(WorkerCollector(runtime))
    server = serve(metrics.registry, 0)
    runtime.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        wait_for(lambda: value(requests.get(url, timeout=5).text, "fifoq_messages_processed_total", actor="payment") == 1,
                 what="processed counter on /metrics")
        text = requests.get(url, timeout=5).text
        assert value(text, "fifoq_connector_consuming", actor="payment") == 1
        assert value(text, "fifoq_connector_active", actor="payment") == 1
    finally:
        runtime.stop()
        server.shutdown()


def test_connector_cli_metrics_port_serves_prometheus_text(backend: Backend) -> None:
    """python -m connectors run --metrics-port, as a real process: /metrics answers, SIGTERM stops it."""
    from backend import ledger_server

    settings = backend.settings
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.declare()  # the connector serves actors a backend declared
    server, ledger_url = ledger_server.serve(backend.ledger)
    port = free_port()
    env = dict(os.environ, FIFOQ_PREFIX=settings.prefix, MONGODB_URL=ledger_url, LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "connectors", "run", "payment", "--metrics-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def consuming() -> bool:
            try:
                return value(requests.get(url, timeout=2).text, "fifoq_connector_consuming", actor="payment") == 1
            except requests.ConnectionError:
                assert proc.poll() is None, proc.communicate()
                return False

        wait_for(consuming, what="the connector's /metrics")
        assert "fifoq_handler_seconds" in requests.get(url, timeout=2).text
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        server.stop_event.set()
    assert proc.returncode == 0, err


def test_demo_emit_metrics_port_counts_emitted_messages(backend: Backend) -> None:
    """python -m demo emit --metrics-port: the backend process's fifoq_messages_emitted_total."""
    from backend import ledger_server

    server, ledger_url = ledger_server.serve(backend.ledger)
    port = free_port()
    env = dict(os.environ, FIFOQ_PREFIX=backend.settings.prefix, MONGODB_URL=ledger_url, LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "demo", "emit", "--rate", "20", "--metrics-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def emitted() -> float:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.ConnectionError:
                assert proc.poll() is None, proc.communicate()
                return 0.0
            return sum(v for (name, _labels), v in samples(text).items() if name == "fifoq_messages_emitted_total")

        wait_for(lambda: emitted() >= 5, timeout=60, interval=0.3, what="emitted messages counted")
        stored = backend.ledger.status_counts()
        assert sum(sum(c.values()) for c in stored.values()) >= 5
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        server.stop_event.set()
    assert proc.returncode == 0, err
    bad = subprocess.run([sys.executable, "-m", "demo", "--metrics-port", "9"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "No such option '--metrics-port'" in bad.stderr


def test_connector_cli_metrics_port_taken_is_an_error(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = dict(os.environ, FIFOQ_PREFIX=settings.prefix, MONGODB_URL=f"mongomock://{settings.prefix}")
        res = subprocess.run([sys.executable, "-m", "connectors", "run", "payment", "--drain", "--metrics-port", str(port)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "cannot serve metrics" in res.stderr


# -- alert rules -----------------------------------------------------------------------------------
def row(name: str, **kw: Any) -> dict[str, Any]:
    base = {"name": name, "state": "running", "blocked": None, "blocked_for_seconds": None, "open": 0,
            "queue": {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 1, "consumer_connected": True}}
    base.update(kw)
    return base


def test_alert_rules_fire_on_blocked_depth_and_missing_consumer() -> None:
    rules = AlertRules(blocked_minutes=5, queue_depth=100, no_consumer=True)
    rows = [
        row("ok"),
        row("young", state="blocked", blocked={"error": {"type": "E"}}, blocked_for_seconds=60,
            queue=dict(row("x")["queue"], consumer_connected=False, consumers=0)),
        row("stuck", state="blocked", blocked={"error": {"type": "KeyError"}}, blocked_for_seconds=301),
        row("deep", queue={"messages_ready": 90, "messages_unacknowledged": 10, "consumers": 1, "consumer_connected": True}),
        row("orphan", queue={"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0, "consumer_connected": False}),
        row("paused", state="paused", queue={"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0,
                                             "consumer_connected": False}),
        row("nostats", queue={"messages_ready": None, "messages_unacknowledged": None, "consumers": None,
                              "consumer_connected": None}, open=500),
    ]
    fired = [(a.rule, a.actor) for a in evaluate(rules, rows)]
    assert fired == [(Rule.ACTOR_BLOCKED, "stuck"), (Rule.NO_CONSUMER, "orphan"), (Rule.QUEUE_DEPTH, "deep"),
                     (Rule.QUEUE_DEPTH, "nostats")]
    # The broker unreachable: no "no consumer" guess.
    assert [a.actor for a in evaluate(rules, [rows[4]], broker_error="down")] == []
    assert evaluate(AlertRules(queue_depth=0, no_consumer=False), rows[3:5]) == []


@pytest.mark.parametrize("var,raw", [("ADMIN_ALERT_BLOCKED_MINUTES", "soon"), ("ADMIN_ALERT_QUEUE_DEPTH", "-1"),
                                     ("ADMIN_ALERT_NO_CONSUMER", "maybe"), ("ADMIN_METRICS_PUBLIC", "perhaps"),
                                     ("ADMIN_ALERT_PERSIST_SECONDS", "-3"), ("ADMIN_BROKER_STATS_LAG_SECONDS", "later")])
def test_console_alert_settings_fail_fast(backend: Backend, var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=var):
        make_app(backend, **{var: raw})


def test_alert_rules_from_env_defaults_and_values() -> None:
    assert AlertRules.from_env({}) == AlertRules(blocked_minutes=5.0, queue_depth=1000, no_consumer=True,
                                                 persist_seconds=60.0, broker_lag_seconds=15.0)
    assert AlertRules.from_env({"ADMIN_ALERT_BLOCKED_MINUTES": "0.5", "ADMIN_ALERT_QUEUE_DEPTH": "10",
                                "ADMIN_ALERT_NO_CONSUMER": "0", "ADMIN_ALERT_PERSIST_SECONDS": "30",
                                "ADMIN_BROKER_STATS_LAG_SECONDS": "7.5"}) == AlertRules(
        blocked_minutes=0.5, queue_depth=10, no_consumer=False, persist_seconds=30.0, broker_lag_seconds=7.5)


# -- the console ---------------------------------------------------------------------------------
def test_console_metrics_need_viewer_or_token(app: Any, viewer: FlaskClient, users: UserStore) -> None:
    anonymous = app.test_client()
    resp = anonymous.get("/metrics")
    assert resp.status_code == 401 and resp.is_json
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer fq_nope.nope"}).status_code == 401
    resp = viewer.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert value(resp.get_data(as_text=True), "fifoq_console_ledger_up") == 1
    token, _ = users.create_token("vera", "prometheus")
    resp = anonymous.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and value(resp.get_data(as_text=True), "fifoq_console_broker_api_up") == 1


def test_console_metrics_public_when_configured(backend: Backend, users: UserStore) -> None:
    client = make_app(backend, ADMIN_METRICS_PUBLIC="1").test_client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/api/alerts").status_code == 401  # only /metrics is opened


def test_console_metrics_blocked_actor_depth_and_alerts(backend: Backend, users: UserStore, blocked: Blocked) -> None:
    """Given payment blocked (fixture), /metrics, /api/alerts and the overview all report it."""
    app = make_app(backend, ADMIN_ALERT_BLOCKED_MINUTES="0")
    client = app.test_client()
    assert login(client, "vera").status_code == 302
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "fifoq_actor_blocked", actor="payment") == 1
    assert value(text, "fifoq_actor_blocked", actor="shipping") == 0
    assert value(text, "fifoq_actor_blocked_seconds", actor="payment") >= 0
    assert value(text, "fifoq_ledger_messages", actor="payment", status="failed") == 1
    assert value(text, "fifoq_ledger_messages", actor="payment", status="queued") == 3
    assert value(text, "fifoq_alert_firing", rule="actor_blocked", actor="payment") == 1
    assert value(text, "fifoq_alerts_firing", rule="actor_blocked") == 1
    # The broker's figures appear once its statistics exist (first collection after the queue;
    # the listing may carry the depth a collection before the consumer count).
    scraped: list[str] = []

    def broker_figures() -> bool:
        scraped[:] = [client.get("/metrics").get_data(as_text=True)]
        return all(value(scraped[0], name, actor="payment", **labels) is not None
                   for name, labels in (("fifoq_queue_messages", {"state": "ready"}), ("fifoq_actor_consumers", {})))

    wait_for(broker_figures, interval=0.5, what="queue statistics")
    assert value(scraped[0], "fifoq_actor_consumers", actor="payment") == 0

    data = client.get("/api/alerts").get_json()
    assert data["rules"] == {"blocked_minutes": 0.0, "queue_depth": 1000, "no_consumer": True, "persist_seconds": 60.0,
                             "broker_lag_seconds": 15.0}
    assert {"rule": "actor_blocked", "actor": "payment"}.items() <= data["firing"][0].items()
    page = client.get("/").get_data(as_text=True)
    assert 'id="alerts"' in page and "payment blocked for" in page


def test_console_metrics_with_broker_unreachable_omit_queue_figures(broker_down_app: Any, blocked: Blocked) -> None:
    client = broker_down_app.test_client()
    assert login(client, "vera").status_code == 302
    text = client.get("/metrics").get_data(as_text=True)
    assert value(text, "fifoq_console_broker_api_up") == 0
    assert value(text, "fifoq_actor_blocked", actor="payment") == 1
    assert not [k for k in samples(text) if k[0] in ("fifoq_queue_messages", "fifoq_actor_consumers")]
    assert client.get("/api/alerts").get_json()["broker_error"]


def test_console_charts_rates_and_backlog_from_the_ledger(viewer: FlaskClient, blocked: Blocked) -> None:
    data = viewer.get("/api/charts?minutes=10").get_json()
    assert data["available"] and len(data["minutes"]) == 10
    by_actor = {s["actor"]: s for s in data["series"]}
    assert sum(by_actor["payment"]["processed"]) == 1
    assert sum(by_actor["payment"]["failed"]) == 1
    assert by_actor["payment"]["backlog"][-1] == 4  # the failed head and 3 waiting behind it
    # The fixture runs no shipping connector: its 5 messages wait, none processed.
    assert sum(by_actor["shipping"]["processed"]) == 0 and by_actor["shipping"]["backlog"][-1] == 5
    assert by_actor["shipping"]["backlog"][0] == 0  # before the test, nothing was open
    assert data["total"]["backlog"][-1] == 9
    assert viewer.get("/api/charts?minutes=0").status_code == 400
    assert len(viewer.get("/api/charts?top=1").get_json()["series"]) == 1
    assert [s["actor"] for s in viewer.get("/api/charts?actor=shipping").get_json()["series"]] == ["shipping"]


def test_console_overview_charts_use_served_script_only(viewer: FlaskClient) -> None:
    page = viewer.get("/").get_data(as_text=True)
    assert 'src="/static/uPlot.iife.min.js"' in page and 'src="/static/charts.js"' in page
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts and all(re.search(r'src="/static/[^"]+"', tag) for tag in scripts)  # no inline, no CDN
    for path in ("/static/uPlot.iife.min.js", "/static/charts.js", "/static/uPlot.min.css"):
        assert viewer.get(path).status_code == 200
