"""The ledger/broker consistency check and the no-consumer alert never cry wolf: they allow for the
management API's statistics lag and flag only what persists across samples (admin.board,
admin.alerts, admin.watch). Against the real broker: a blocked actor receiving traffic shows no
divergence, and pausing then resuming an actor does not raise "no consumer"."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from admin.alerts import AlertRules, Rule, evaluate
from admin.consistency import consistency
from admin.users import UserStore
from admin.watch import COLLECTION, Watch
from backend.app import Backend
from backend.ledger import utcnow
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.helpers import Blocked, Recorder, login, make_app, wait_for

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=utcnow().tzinfo)


def queue(ready: int | None, unacked: int | None = 0, ack_rate: float | None = None, consumers: int = 1) -> dict[str, Any]:
    return {"messages_ready": ready, "messages_unacknowledged": unacked, "ack_rate": ack_rate, "deliver_rate": None,
            "consumers": consumers, "consumer_connected": consumers > 0}


def check(watch: Watch, at: float, counts: dict[str, int], q: dict[str, Any] | None, actor: str = "payment") -> dict[str, Any]:
    now = T0 + timedelta(seconds=at)
    return consistency(counts, q, None, actor=actor, now=now, sample=watch.sample(now))


def test_consistency_gap_explained_by_recent_arrivals_is_not_a_divergence(backend: Backend, blocked: Blocked) -> None:
    """payment (blocked) has 3 queued messages, all created just now: a broker count that misses
    them is the statistics' lag, not a loss; the same gap a minute later is a loss."""
    counts = {"queued": 3, "failed": 1, "done": 1}
    now = utcnow()
    fresh = consistency(counts, queue(0), None, actor="payment", ledger=backend.ledger, now=now, sample=None)
    assert fresh["status"] == "ok" and fresh["ok"] is True and fresh["tolerance"] == 5
    assert "do not count yet 3" in fresh["explanation"]
    later = consistency(counts, queue(0), None, actor="payment", ledger=backend.ledger, now=now + timedelta(minutes=1),
                        sample=None)
    assert later["status"] == "missing" and later["ok"] is False and later["tolerance"] == 0
    assert consistency(counts, queue(1), None, actor="payment", ledger=backend.ledger, now=now,
                       sample=None)["status"] == "ok"


def test_consistency_the_overview_counts_recent_open_arrivals_from_its_own_snapshot(backend: Backend,
                                                                                   blocked: Blocked) -> None:
    """The board counts, per actor, the open messages created within the lag (what a lagging broker
    figure can miss: those settled since left the open count too) without a query per actor."""
    now = utcnow()
    board = backend.ledger.board(arrived_since=now - timedelta(seconds=15))
    assert board["arrived"]["payment"] == 4  # the failed head and the 3 queued behind it
    assert backend.ledger.created_since("payment", now - timedelta(seconds=15)) == 5  # the done one too
    assert backend.ledger.board(arrived_since=now + timedelta(seconds=1))["arrived"]["payment"] == 0
    counts = board["counts"]["payment"]
    assert consistency(counts, queue(0), None, actor="payment", ledger=backend.ledger, now=now,
                       sample=None)["status"] == "ok"  # 3 queued missing from a figure 15 s old: the lag


def test_consistency_settled_messages_still_counted_by_the_broker_are_allowed_for_by_its_rate() -> None:
    counts = {"queued": 0, "done": 500}
    busy = consistency(counts, queue(40, ack_rate=10.0), None, sample=None)  # 10/s over a 15 s lag: 150
    assert busy["status"] == "ok" and busy["tolerance"] == 150 and "still count 40" in busy["explanation"]
    idle = consistency(counts, queue(40, ack_rate=0.0), None, sample=None)
    assert idle["status"] == "extra" and idle["ok"] is False


def test_consistency_divergence_is_flagged_only_once_it_persists(backend: Backend) -> None:
    watch = Watch(backend.store, persist_seconds=60, broker_lag_seconds=15)
    counts = {"queued": 5}
    first = check(watch, 0, counts, queue(2))
    assert first["status"] == "settling" and first["ok"] is True and first["divergent_for_seconds"] == 0
    assert "reported only if it lasts 60 s" in first["explanation"]
    assert check(watch, 30, counts, queue(2))["status"] == "settling"
    flagged = check(watch, 61, counts, queue(2))
    assert flagged["status"] == "missing" and flagged["ok"] is False and flagged["divergent_for_seconds"] == 61
    # it clears: the memory goes with it, and a new gap starts over
    assert check(watch, 70, counts, queue(5))["status"] == "ok"
    with backend.store.op() as db:
        assert db[COLLECTION].count_documents({}) == 0
    assert check(watch, 80, counts, queue(2))["status"] == "settling"
    # samples too far apart prove nothing about the time between them: starts over
    assert check(watch, 80 + 600, counts, queue(2))["divergent_for_seconds"] == 0
    # no queue at all while messages are expected: the same persistence
    assert check(watch, 0, counts, None, actor="ghost")["status"] == "settling"
    assert check(watch, 60, counts, None, actor="ghost")["status"] == "no_queue"


def test_consistency_persistence_is_shared_by_every_console_worker(backend: Backend) -> None:
    """Two consoles (two gunicorn workers) on one store see one history."""
    worker_a = Watch(backend.store, persist_seconds=60, broker_lag_seconds=15)
    worker_b = Watch(backend.store, persist_seconds=60, broker_lag_seconds=15)
    assert check(worker_a, 0, {"queued": 5}, queue(0))["status"] == "settling"
    assert check(worker_b, 40, {"queued": 5}, queue(0))["status"] == "settling"
    assert check(worker_a, 65, {"queued": 5}, queue(0))["status"] == "missing"


def row(state: str, connected: bool | None) -> dict[str, Any]:
    return {"name": "payment", "state": state, "blocked": None, "blocked_for_seconds": None, "open": 0,
            "queue": {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": int(bool(connected)),
                      "consumer_connected": connected}, "consistency": {"ok": True}}


def test_no_consumer_alert_ignores_the_gap_after_a_resume_and_fires_on_a_lasting_absence(backend: Backend) -> None:
    rules = AlertRules(persist_seconds=60)
    watch = Watch(backend.store, rules.persist_seconds, rules.broker_lag_seconds)

    def fired(at: float, state: str, connected: bool | None) -> list[Rule]:
        return [a.rule for a in evaluate(rules, [row(state, connected)], None, watch.sample(T0 + timedelta(seconds=at)))]

    # pause, resume: the broker shows no consumer for a few seconds after the resume
    assert fired(0, "running", True) == []
    assert fired(5, "paused", False) == []
    assert fired(20, "running", False) == []
    assert fired(27, "running", None) == []  # no figure yet: neither for nor against
    assert fired(30, "running", True) == []
    assert fired(40, "paused", False) == []
    assert fired(45, "running", False) == []  # a new resume starts a new count, not the one of t=20
    assert fired(50, "running", True) == []
    # a connector that really is gone
    assert fired(100, "running", False) == []
    assert fired(140, "running", False) == []
    assert fired(161, "running", False) == [Rule.NO_CONSUMER]
    # without the console's memory (a direct call), a single sample decides, as before
    assert [a.rule for a in evaluate(rules, [row("running", False)])] == [Rule.NO_CONSUMER]


# -- against the real broker ------------------------------------------------------------------------
def _sampler(client: FlaskClient, path: str, stop: threading.Event, out: list[dict[str, Any]]) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            resp = client.get(path)
            assert resp.status_code == 200, resp.get_data(as_text=True)
            out.append(resp.get_json())
            stop.wait(0.4)

    thread = threading.Thread(target=run, name="sampler", daemon=True)
    thread.start()
    return thread


def test_consistency_blocked_actor_with_traffic_shows_no_divergence(backend: Backend, users: UserStore,
                                                                    blocked: Blocked) -> None:
    """payment is blocked and events keep arriving (3 every second or so): the ledger counts each
    one at once, the broker's statistics a few seconds later. With persistence switched off, so
    that any gap the lag does not explain would show at once, the board never says missing."""
    app = make_app(backend, ADMIN_ALERT_PERSIST_SECONDS="0")
    client = app.test_client()
    assert login(client, "vera").status_code == 302
    wait_for(lambda: client.get("/api/actors/payment/consistency").get_json()["status"] != "unknown",
             timeout=30, interval=0.5, what="the queue's first statistics")
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = _sampler(client, "/api/overview", stop, samples)
    customer = {"email": "a@example.com"}
    try:
        end = time.monotonic() + 12  # a few of the broker's statistics intervals (5 s)
        i = 0
        while time.monotonic() < end:
            backend.emit_event("tour.booked", {"amount": 100 + i, "customer": customer})
            i += 1
            time.sleep(0.3)
    finally:
        stop.set()
        sampler.join(timeout=30)
    rows = [r for s in samples for r in s["actors"] if r["name"] == "payment" and r["consistency"]]
    statuses = {r["consistency"]["status"] for r in rows}
    assert len(rows) >= 10 and statuses <= {"ok", "unknown"}, statuses
    # the lag was there: some samples saw fewer messages in the broker than the ledger had queued
    lagging = [r for r in rows if r["consistency"]["broker_total"] is not None
               and r["consistency"]["broker_total"] < r["consistency"]["ledger_queued"]]
    assert lagging, "the broker's statistics never lagged: the test did not exercise the check"
    alerts = client.get("/api/alerts").get_json()
    assert not [a for a in alerts["firing"] if a["rule"] == "divergence"]


def test_pause_and_resume_do_not_flap_the_no_consumer_alert(backend: Backend, users: UserStore) -> None:
    """A connector serves payment; an operator pauses it (the runtime lets go of the queue) and
    resumes it (it consumes again, and the broker's figures show it seconds later)."""
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.declare()
    backend.emit_event("tour.booked", {"amount": 1})
    reg = Registry()
    reg.register("payment", Recorder())
    runtime = Runtime(backend.settings, backend.ledger, reg).start()
    app = make_app(backend)  # the default persistence (60 s)
    client = app.test_client()
    assert login(client, "vera").status_code == 302
    alerts: list[dict[str, Any]] = []
    boards: list[dict[str, Any]] = []

    def consumer_shown() -> bool:
        q = client.get("/api/actors/payment").get_json()["queue"]
        return bool(q and q["consumer_connected"])

    try:
        wait_for(consumer_shown, timeout=30, interval=0.5, what="the connector's consumer in the broker's figures")
        stop = threading.Event()
        threads = [_sampler(client, "/api/alerts", stop, alerts), _sampler(client, "/api/overview", stop, boards)]
        try:
            backend.operations.pause("payment", "otto", "provider maintenance")
            wait_for(lambda: not consumer_shown(), timeout=30, interval=0.5, what="the broker to show no consumer")
            backend.operations.resume("payment", "otto")
            wait_for(consumer_shown, timeout=30, interval=0.5, what="the consumer back in the broker's figures")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    finally:
        runtime.stop()
    rows = [r for b in boards for r in b["actors"] if r["name"] == "payment"]
    # what used to fire: running again, and no consumer in the broker's (lagging) figures
    assert [r for r in rows if r["state"] == "running" and r["queue"] and r["queue"]["consumer_connected"] is False]
    assert not [a for s in alerts for a in s["firing"] if a["rule"] == "no_consumer"]
