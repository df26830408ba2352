"""Races on the delivery path, on the real broker: replicas that overlap, standbys that wake up
with stale knowledge, drain runs beside a live consumer, gaps, late declarations, refusals."""
from __future__ import annotations

import itertools
import logging
import threading
import time
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests

from backend.app import Backend
from backend.errors import ConfigError
from backend.settings import MAX_PREFETCH, Settings
from backend.values import Message, Status
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import ALL_FLAVORS, API_AUTH, API_URL
from tests.helpers import Recorder, emit_around_a_gap, wait_for

LEDGER_FLAVORS = ALL_FLAVORS


class Timeline:
    """A handler that records (seq, start, end) of every call, and can be held on one seq."""

    def __init__(self, hold_seq: int | None = None) -> None:
        self.calls: list[tuple[int, float, float | None]] = []
        self.lock = threading.Lock()
        self.hold_seq = hold_seq
        self.gate = threading.Event()
        self.holding = threading.Event()

    def __call__(self, message: Message) -> None:
        with self.lock:
            index = len(self.calls)
            self.calls.append((message.seq, time.monotonic(), None))
        if message.seq == self.hold_seq:
            self.holding.set()
            self.gate.wait(60)
        with self.lock:
            self.calls[index] = (message.seq, self.calls[index][1], time.monotonic())


def _runtime(backend: Backend, actor: str, handler, settings: Settings | None = None) -> Runtime:
    reg = Registry()
    reg.register(actor, handler)
    return Runtime(settings or backend.settings, backend.ledger, reg)


def _close_connections(owner: str) -> int:
    """Close, from the broker's side, every connection of one runtime (a network cut)."""
    resp = requests.get(f"{API_URL}/api/connections", auth=API_AUTH, timeout=10, params={"columns": "name,client_properties"})
    resp.raise_for_status()
    closed = 0
    for conn in resp.json():
        if owner in conn.get("client_properties", {}).get("connection_name", ""):
            requests.delete(f"{API_URL}/api/connections/{quote(conn['name'], safe='')}", auth=API_AUTH, timeout=10)
            closed += 1
    return closed


def test_claim_lease_refuses_another_owner_until_it_expires(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    mid = backend.emit_event("x", {})[0]
    backend.emitter.flush()
    ledger = backend.ledger
    doc = ledger.claim(ledger.message(mid), "a", 1.0)
    assert doc is not None and doc["claimed_from"] == Status.QUEUED.value and doc["owner"] == "a"
    assert ledger.claim(ledger.message(mid), "b", 1.0) is None  # a's lease is live
    assert ledger.renew(mid, "a", doc["attempts"], 1.5) and not ledger.renew(mid, "b", doc["attempts"], 1.5)
    time.sleep(1.0)
    assert ledger.claim(ledger.message(mid), "b", 1.0) is None  # renewed: still a's
    wait_for(lambda: ledger.claim(ledger.message(mid), "b", 30.0) is not None, timeout=5, what="a's lease expiring")
    taken = ledger.message(mid)
    assert taken["owner"] == "b" and taken["attempts"] == doc["attempts"] + 1  # b's attempt is fenced
    assert not ledger.renew(mid, "a", doc["attempts"], 1.5)  # a learns it lost the claim
    assert not ledger.settle(doc, "a")  # a's late outcome is refused, never taken as done
    assert ledger.message(mid)["status"] == Status.PROCESSING.value


def test_standby_does_not_run_a_message_a_cut_off_active_replica_is_still_running(backend: Backend) -> None:
    """The active replica loses its broker connection mid-handler: the broker hands the queue and
    the unacked message to the standby at once, but the handler is still running; the standby
    must wait for it (longer than one lease: the runner renews its claim), not run it again."""
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    backend.emit_many([("x", {"i": i}) for i in range(6)])
    line = Timeline(hold_seq=1)
    first, second = _runtime(backend, "payment", line), _runtime(backend, "payment", line)
    first.start()
    try:
        assert line.holding.wait(30), "the first replica never started the first message"
        second.start()
        wait_for(lambda: second.workers["payment"].consumer is not None and second.workers["payment"].consumer.is_open, what="standby consuming")
        # the management API lists a new connection after its next statistics tick
        wait_for(lambda: _close_connections(first.owner) >= 1, timeout=30, interval=0.5, what="the active replica's connection listed")
        # the standby is now the active consumer and has message 1 redelivered; it waits
        time.sleep(backend.settings.claim_lease * 1.5)
        assert [seq for seq, _, _ in line.calls] == [1]
        line.gate.set()
        wait_for(lambda: len(line.calls) == 6 and all(end for _, _, end in line.calls), timeout=60, what="all processed")
    finally:
        line.gate.set()
        first.stop()
        second.stop()
    assert [seq for seq, _, _ in line.calls] == [1, 2, 3, 4, 5, 6]
    assert all(b[1] >= a[2] for a, b in itertools.pairwise(line.calls)), "two calls overlapped"
    assert backend.ledger.status_counts("payment") == {"payment": {"done": 6}}


def test_keyed_standby_holds_a_key_blocked_while_it_was_waiting(backend: Backend) -> None:
    backend.subscriptions.actor("dossiers", lanes=1)
    backend.subscriptions.subscribe("dossiers", "step", ordering_key="k")
    backend.declare()
    rec = Recorder(fail_when=lambda m: m.payload.get("bad"))
    first, second = _runtime(backend, "dossiers", rec), _runtime(backend, "dossiers", rec)
    first.start()
    try:
        backend.emit_event("step", {"k": "warm-up"})
        wait_for(lambda: len(rec.calls) == 1, what="first replica active")
        second.start()  # a standby: it reads the lane's blocked keys now, before A blocks
        wait_for(lambda: second.workers["dossiers"].consumer is not None and second.workers["dossiers"].consumer.is_open, what="standby consuming")
        backend.emit_event("step", {"k": "A", "i": 0, "bad": True})
        wait_for(lambda: [k["key"] for k in backend.ledger.blocked_keys("dossiers")] == ["A"], what="key A blocked")
        first.stop()  # the standby takes over
        later = backend.emit_event("step", {"k": "A", "i": 1})[0]
        backend.emit_event("step", {"k": "B", "i": 0})
        wait_for(lambda: {"k": "B", "i": 0} in rec.payloads(), what="key B processed by the standby")
    finally:
        first.stop()
        second.stop()
    assert {"k": "A", "i": 1} not in rec.payloads()
    assert backend.ledger.message(later)["status"] == Status.HELD.value


def test_drain_run_beside_an_active_replica_leaves_its_messages_alone(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    backend.emit_many([("x", {"i": i}) for i in range(8)])
    line = Timeline(hold_seq=1)
    active = _runtime(backend, "payment", line)
    active.start()
    try:
        assert line.holding.wait(30)
        # the active replica holds every message (prefetched, unacked): none is ready in the
        # queue. The drain run waits for the one being processed (its claim), then stops.
        threading.Timer(2.0, line.gate.set).start()
        stats = _runtime(backend, "payment", Recorder()).run(drain=True, timeout=60)
        wait_for(lambda: len(line.calls) == 8 and all(end for _, _, end in line.calls), what="active replica finished")
    finally:
        line.gate.set()
        active.stop()
    s = stats["payment"]
    assert (s.processed, s.from_ledger) == (0, 0), "the drain run took messages the active consumer holds"
    assert [seq for seq, _, _ in line.calls] == list(range(1, 9))


def test_waiting_on_a_sequence_gap_does_not_reconnect_in_a_loop(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    settings = backend.settings.with_(poll_interval=0.5, gap_grace=3.0)
    emit_around_a_gap(backend)
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="connectors.worker"):
        _runtime(backend, "payment", rec, settings).run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == [0, 2]
    opens = [r for r in caplog.records if r.name == "connectors.worker" and "consuming" in r.getMessage()]
    # The worker waits for the gap on its open connection, with its deliveries: one session.
    assert len(opens) == 1, [r.getMessage() for r in opens]


def test_connector_started_before_any_declaration_serves_every_lane_declared_later(backend: Backend) -> None:
    rec = Recorder()
    rt = _runtime(backend, "dossiers", rec)
    rt.start()
    try:
        time.sleep(0.5)  # the connector is up first, with no backend having declared the actor
        backend.subscriptions.actor("dossiers", lanes=3)
        backend.subscriptions.subscribe("dossiers", "step", ordering_key="k")
        backend.declare()
        assert backend.ledger.actor("dossiers")["lanes"] == 3
        keys = [f"K{i}" for i in range(12)]
        backend.emit_many([("step", {"k": k}) for k in keys])
        lanes = {d["lane"] for d in backend.ledger.find(actor="dossiers", limit=50)[0]}
        assert len(lanes) > 1  # the keys spread over several lanes
        wait_for(lambda: len(rec.calls) == len(keys), what="every lane served")
    finally:
        rt.stop()
    assert sorted(p["k"] for p in rec.payloads()) == sorted(keys)


def test_emit_stores_the_messages_when_the_broker_refuses_the_queue(backend: Backend) -> None:
    # a queue of the same name already exists with other arguments: the declaration is refused
    vhost = quote(unquote(urlsplit(backend.settings.amqp_urls[0]).path[1:]) or "/", safe="")
    name = backend.settings.queue_name("payment")
    requests.put(f"{API_URL}/api/queues/{vhost}/{quote(name, safe='')}", auth=API_AUTH,
                 json={"durable": True, "arguments": {"x-queue-type": "classic"}}, timeout=10).raise_for_status()
    backend.subscriptions.subscribe("payment", "x")
    ids = backend.emit_event("x", {"i": 1})
    assert len(ids) == 1
    assert backend.ledger.message(ids[0])["status"] == Status.PENDING.value  # left to the relay


def test_prefetch_above_the_quorum_queue_cap_is_refused_at_start_up() -> None:
    assert Settings.from_env({"FIFOQ_PREFETCH": str(MAX_PREFETCH)}).prefetch == MAX_PREFETCH
    with pytest.raises(ConfigError, match="FIFOQ_PREFETCH"):
        Settings.from_env({"FIFOQ_PREFETCH": str(MAX_PREFETCH + 1)})
    with pytest.raises(ConfigError, match="FIFOQ_CLAIM_LEASE_SECONDS"):
        Settings.from_env({"FIFOQ_CLAIM_LEASE_SECONDS": "0"})


def test_runtime_and_handler_log_lines_carry_the_correlation_id(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    from backend import logs

    logs.install()
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    handler_log = logging.getLogger("tests.handler")

    def handler(message: Message) -> None:
        handler_log.info("charging for message %s", message.id)
        if message.payload.get("bad"):
            raise ValueError("card refused")

    backend.emit_event("x", {"bad": False}, correlation_id="order-41")
    failed = backend.emit_event("x", {"bad": True}, correlation_id="order-42")[0]
    with caplog.at_level(logging.INFO):
        _runtime(backend, "payment", handler).run(drain=True, timeout=60)
    charging = {r.correlation_id for r in caplog.records if r.name == "tests.handler"}
    assert charging == {"order-41", "order-42"}
    failure = [r for r in caplog.records if r.name == "connectors.worker" and r.levelno == logging.ERROR]
    assert [(r.correlation_id, failed in r.getMessage(), "actor=payment" in r.getMessage()) for r in failure] == [("order-42", True, True)]
    assert all(r.correlation_id == "-" for r in caplog.records if "consuming" in r.getMessage())
    assert "cid=%(correlation_id)s" in logs.FORMAT


def test_acks_of_settled_messages_go_out_before_the_worker_waits(backend: Backend) -> None:
    """Acks are sent as one `multiple` ack per run of settled deliveries, but never held while
    the worker waits: a connection cut after the work is done redelivers nothing."""
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    rec = Recorder()
    rt = _runtime(backend, "payment", rec)
    rt.start()
    try:
        backend.emit_many([("x", {"i": i}) for i in range(60)])
        wait_for(lambda: len(rec.calls) == 60, what="all processed")
        wait_for(lambda: _close_connections(rt.owner) >= 1, timeout=30, interval=0.5, what="the connector's connection listed")
        backend.emit_event("x", {"i": 60})
        wait_for(lambda: len(rec.calls) == 61, what="processed after reconnecting")
    finally:
        rt.stop()
    stats = rt.workers["payment"].stats
    assert (stats.processed, stats.skipped) == (61, 0), "settled messages were redelivered: their acks were held back"
    assert [p["i"] for p in rec.payloads()] == list(range(61))


def test_drain_run_holds_a_ledger_only_message_of_a_blocked_key(backend: Backend) -> None:
    """A message stored but never published (the relay has not run yet) is run from the ledger by
    a drain run that never received a delivery: it must still be held behind its blocked key."""
    backend.subscriptions.actor("dossiers", lanes=1)
    backend.subscriptions.subscribe("dossiers", "step", ordering_key="k")
    backend.declare()
    backend.emit_event("step", {"k": "A", "i": 0, "bad": True})
    first = Recorder(fail_when=lambda m: m.payload.get("bad"))
    _runtime(backend, "dossiers", first).run(drain=True, timeout=60)
    assert [k["key"] for k in backend.ledger.blocked_keys("dossiers")] == ["A"]
    seq = backend.ledger.allocate("dossiers", 1, 0)
    unpublished = backend.ledger.new_message("dossiers", seq, "step", {"k": "A", "i": 1}, "c-1", 0, "A")
    backend.ledger.insert([unpublished])
    second = Recorder()
    _runtime(backend, "dossiers", second).run(drain=True, timeout=60)
    assert second.payloads() == []
    assert backend.ledger.message(unpublished["_id"])["status"] == Status.HELD.value
