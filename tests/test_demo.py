"""The demo on the real broker: its scenarios end to end in-process, and `python -m demo` as a process."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from backend.app import Backend
from backend.broker import ActorConsumer
from backend.errors import ConfigError
from backend.settings import Settings, redact_url
from backend.values import Message, QueueType
from connectors import examples
from connectors.registry import Registry
from connectors.runtime import Runtime
from demo import cli
from demo.scenarios import ACTORS, BAD_CURRENCY, Player, Scenario, declare
from tests.conftest import delete_prefixed
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
COUNT = 60


class Recording:
    """The example connectors, recording each message they handled successfully, per actor."""

    def __init__(self) -> None:
        self.done: dict[str, list[Message]] = {a: [] for a in ACTORS}
        self.lock = threading.Lock()
        self.registry = Registry()
        for actor in ACTORS:
            reg = examples.registry.get(actor)
            self.registry.register(actor, self._wrap(actor, reg.handler), on_interrupted=reg.on_interrupted)

    def _wrap(self, actor: str, handler: Any) -> Any:
        def call(message: Message) -> None:
            handler(message)
            with self.lock:
                self.done[actor].append(message)

        return call

    def events(self, actor: str) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(m.event, m.payload) for m in self.done[actor]]


def _expected(events: list[tuple[str, dict[str, Any]]], names: tuple[str, ...], **where: str) -> list[tuple[str, dict[str, Any]]]:
    return [(n, p) for n, p in events if n in names and all(p.get(k) == v for k, v in where.items())]


def test_demo_scenarios_fan_out_in_order_block_on_bad_payment_and_drain_after_edit_and_replay(backend: Backend) -> None:
    # Given the demo's declarations and a short seeded scenario holding the bad booking
    declare(backend.subscriptions)
    backend.declare()
    events = Scenario(SEED).take(COUNT)
    bad = [p for n, p in events if n == "tour.booked" and p["currency"] == BAD_CURRENCY]
    assert len(bad) == 1, "the scenario holds exactly one bad booking"
    assert {n for n, _ in events} == {"tour.booked", "order.created", "order.paid", "order.cancelled", "chat.message"}
    # When the player emits it (the bad booking passes the schema) and the connectors drain
    assert Player(backend, seed=SEED, rate=0, count=COUNT).play() == COUNT
    rec = Recording()
    Runtime(backend.settings, backend.ledger, rec.registry).run(drain=True, timeout=180)

    # Then each booking fanned out to notification and availability, in emission order
    bookings = _expected(events, ("tour.booked",))
    assert rec.events("notification") == bookings
    assert rec.events("availability") == bookings
    # Order events reached each actor per its topic pattern, in emission order
    orders = _expected(events, ("order.created", "order.paid", "order.cancelled"))
    assert rec.events("shipping") == orders  # order.*
    assert rec.events("analytics") == orders  # order.#
    assert rec.events("inventory") == _expected(events, ("order.created",))
    for order_id in {p["order_id"] for _, p in orders}:
        lifecycle = [n for n, p in rec.events("shipping") if p["order_id"] == order_id]
        assert lifecycle[0] == "order.created" and len(lifecycle) <= 2
    # Chat lines arrived in order for each participant (payload filter on `to`)
    for who in ("alice", "bob"):
        lines = rec.events(f"chat-{who}")
        assert lines == _expected(events, ("chat.message",), to=who)
        numbers = [p["n"] for _, p in lines]
        assert numbers == sorted(numbers) and all(p["from"] != who for _, p in lines)

    # Payment ran everything before the bad booking, then blocked on it with messages behind it
    payment_events = _expected(events, ("tour.booked", "order.paid", "order.cancelled"))
    bad_index = payment_events.index(("tour.booked", bad[0]))
    assert rec.events("payment") == payment_events[:bad_index]
    state = backend.ledger.actor("payment")
    blocked_id = state["blocked"]["message_id"]
    failed = backend.ledger.message(blocked_id)
    assert failed["status"] == "failed" and failed["payload"] == bad[0]
    assert failed["last_error"]["type"] == "PaymentRefused"
    assert f"currency '{BAD_CURRENCY}'" in failed["last_error"]["message"]
    waiting = backend.ledger.status_counts("payment")["payment"]
    assert waiting.get("queued", 0) + waiting.get("pending", 0) == len(payment_events) - bad_index - 1 > 0
    # The other actors were not affected
    counts = backend.ledger.status_counts()
    assert all(set(counts[a]) == {"done"} for a in ACTORS if a != "payment" and a in counts)

    # When the operator fixes the currency in place and replays
    fixed = dict(bad[0], currency="EUR")
    edited = backend.operations.edit(blocked_id, fixed, by="operator")
    assert '"currency": "EUR"' in edited["history"][-1]["diff"]
    backend.operations.replay(blocked_id, by="operator")
    Runtime(backend.settings, backend.ledger, rec.registry).run(drain=True, timeout=180)

    # Then payment drains in order, starting with the repaired message, and is unblocked
    expected_after = payment_events[:bad_index] + [("tour.booked", fixed)] + payment_events[bad_index + 1:]
    assert rec.events("payment") == expected_after
    assert [m.id for m in rec.done["payment"]][bad_index] == blocked_id
    assert backend.ledger.actor("payment")["blocked"] is None
    assert backend.ledger.status_counts("payment") == {"payment": {"done": len(payment_events)}}


def test_demo_scenario_same_seed_same_events() -> None:
    assert Scenario(3).take(200) == Scenario(3).take(200)
    assert Scenario(3).take(200) != Scenario(4).take(200)
    assert not [p for n, p in Scenario(3, bad_booking=0).take(200) if p.get("currency") == BAD_CURRENCY]


def test_demo_reset_queues_refuses_a_queue_another_process_consumes(settings) -> None:
    # Given a demo actor's queue with a live consumer (someone else's system on this prefix)
    consumer = ActorConsumer(settings, "payment", QueueType.QUORUM)
    consumer.open()
    try:
        # When the demo resets its queues, then it refuses, and the queue is still there
        with pytest.raises(ConfigError, match="consumer"):
            cli.reset_queues(settings, ["payment"])
        assert consumer.ready_count() == 0
    finally:
        consumer.release()
    # Without a consumer the stale queue is deleted
    cli.reset_queues(settings, ["payment"])
    api = os.environ.get("RABBITMQ_API_URL", "http://127.0.0.1:15672").rstrip("/")
    auth = (os.environ.get("RABBITMQ_API_USER", "guest"), os.environ.get("RABBITMQ_API_PASSWORD", "guest"))
    names = [q["name"] for q in requests.get(f"{api}/api/queues", auth=auth, timeout=10).json()]
    assert settings.queue_name("payment") not in names


def test_demo_cli_bad_arguments_and_settings_exit_2_with_one_line(monkeypatch, run_cli) -> None:
    res = run_cli(cli.main, ["--duration", "soon"])
    assert res.code == 2 and len(res.stderr.strip().splitlines()) == 1 and "--duration" in res.stderr
    monkeypatch.setenv("FIFOQ_PREFIX", "Not A Prefix")
    res = run_cli(cli.main, ["--duration", "1"])
    err = res.stderr.strip().splitlines()
    assert res.code == 2 and len(err) == 1 and err[0].startswith("error: FIFOQ_PREFIX=")
    monkeypatch.delenv("FIFOQ_PREFIX")
    monkeypatch.setenv("MONGODB_URL", "")
    res = run_cli(cli.main, ["emit", "--duration", "1"])
    assert res.code == 2 and "needs MONGODB_URL" in res.stderr


def test_demo_process_serves_the_console_and_stops_by_itself(prefix: str, tmp_path: Path) -> None:
    """`python -m demo --duration 10`: the console answers, the demo login works, payment blocks on
    the bad booking while the other actors run, and the process exits 0 by itself."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, FIFOQ_PREFIX=prefix, ADMIN_PORT=str(port), ADMIN_HOST="127.0.0.1", MONGODB_URL="",
               DEMO_ADMIN_PASSWORD="demo-test-pw")
    env.pop("ADMIN_ENV", None)
    env.pop("ADMIN_SECRET_KEY", None)
    log_path = tmp_path / "demo.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "demo", "--duration", "10", "--rate", "5"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        def up() -> bool:
            try:
                return requests.get(f"{base}/login", timeout=2).status_code == 200
            except requests.RequestException:
                return proc.poll() is not None

        wait_for(up, timeout=30, interval=0.2, what="the demo console to listen")
        assert proc.poll() is None, log_path.read_text()
        session = requests.Session()
        token = re.search(r'name="csrf_token" value="([^"]+)"', session.get(f"{base}/login", timeout=5).text).group(1)
        resp = session.post(f"{base}/login", data={"username": "admin", "password": "demo-test-pw", "csrf_token": token},
                            timeout=5, allow_redirects=False)
        assert resp.status_code == 302
        assert session.get(f"{base}/api/me", timeout=5).json()["role"] == "admin"

        def payment_blocked() -> bool:
            return bool(session.get(f"{base}/api/actors/payment", timeout=5).json().get("blocked"))

        wait_for(payment_blocked, timeout=8, interval=0.3, what="the bad booking to block payment")
        assert session.get(f"{base}/api/actors/notification", timeout=5).json()["counts"]["done"] > 0
        # the console's /metrics carries the pipeline's counters of the demo process too
        scraped = session.get(f"{base}/metrics", timeout=5).text
        for name in ("fifoq_messages_emitted_total", "fifoq_messages_processed_total"):
            assert re.search(name + r'\{actor="notification"\} [1-9]', scraped), name
        assert re.search(r'fifoq_messages_failed_total\{actor="payment"\} [1-9]', scraped)
        assert 'fifoq_connector_consuming{actor="notification"} 1.0' in scraped
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, log_path.read_text()[-3000:]
        assert base in out and "admin / demo-test-pw" in out and "operator / " in out and "viewer / " in out
        log_text = log_path.read_text()
        for url in Settings.from_env().amqp_urls:  # the broker is logged, its password is not
            password = urlsplit(url).password
            assert redact_url(url) in log_text and (not password or f":{password}@" not in log_text)
        assert "Exception in thread" not in log_text, log_text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        delete_prefixed(prefix)
