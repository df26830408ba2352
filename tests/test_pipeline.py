"""The core pipeline on the real broker: order, blocking, operator actions, pause, relay."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from backend.app import Backend
from backend.errors import Conflict, SchemaViolation
from backend.values import Message, Status
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import ALL_FLAVORS
from tests.helpers import Recorder, emit_around_a_gap, wait_for

LEDGER_FLAVORS = ALL_FLAVORS


def _runtime(backend: Backend, handlers: dict) -> Runtime:
    reg = Registry()
    for actor, fn in handlers.items():
        reg.register(actor, fn)
    return Runtime(backend.settings, backend.ledger, reg)


@pytest.mark.embedded_only
def test_pipeline_three_actors_2000_messages_each_in_exact_order_exactly_once(backend: Backend) -> None:
    # Given three actors, two of them subscribed with topic patterns
    subs = backend.subscriptions
    subs.subscribe("payment", "order.created")
    subs.subscribe("shipping", "order.*")
    subs.subscribe("analytics", "order.#")
    backend.declare()
    # When 2,000 events are emitted (batches and single calls mixed)
    for start in range(0, 1900, 100):
        backend.emit_many([("order.created", {"n": i}) for i in range(start, start + 100)])
    for i in range(1900, 2000):
        backend.emit_event("order.created", {"n": i})
    recs = {a: Recorder() for a in ("payment", "shipping", "analytics")}
    stats = _runtime(backend, recs).run(drain=True, timeout=300)
    # Then each handler saw its actor's messages in emission order, each exactly once, and every
    # one came through its queue (none had to be fetched from the ledger behind a broker gap)
    assert {a: (s.processed, s.from_ledger, s.skipped) for a, s in stats.items()} == {a: (2000, 0, 0) for a in recs}
    expected = [{"n": i} for i in range(2000)]
    for actor, rec in recs.items():
        assert rec.payloads() == expected, actor
        assert rec.seqs() == list(range(1, 2001)), actor
        assert len({m.id for m in rec.calls}) == 2000
    counts = backend.ledger.status_counts()
    assert counts == {a: {"done": 2000} for a in recs}


def test_pipeline_a_backlog_costs_one_ledger_round_trip_per_message_in_order_exactly_once(backend: Backend) -> None:
    """Settling message k and claiming k+1 travel in one round trip; the read-ahead of the next
    messages happens before that settle (not as a settle, a read and a claim), and the
    watermark moves once per 100 messages: a drained backlog of 1,000 costs at most 1.03 ledger
    operations on messages and lanes per message, counted by the store (backend.store.METER)."""
    from backend.store import METER

    backend.subscriptions.subscribe("payment", "order.paid")
    backend.declare()
    for start in range(0, 1000, 100):
        backend.emit_many([("order.paid", {"n": i}) for i in range(start, start + 100)])
    backend.emitter.flush()
    rec = Recorder()
    METER.start()
    try:
        stats = _runtime(backend, {"payment": rec}).run(drain=True, timeout=300)
    finally:
        calls = METER.stop()
    assert (stats["payment"].processed, stats["payment"].skipped) == (1000, 0)
    assert rec.seqs() == list(range(1, 1001)) and rec.payloads() == [{"n": i} for i in range(1000)]
    # The actors' state is read once per poll interval for the whole process (time, not messages).
    per_message = [c for c in calls if c[2] in ("messages", "lanes")]
    assert len(per_message) / 1000 <= 1.03, Counter((c[2], c[3]) for c in calls)


def test_pipeline_a_ledger_error_at_the_read_ahead_before_a_settle_runs_no_handler_twice(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """When message 100 succeeds the read-ahead has run out and the next 100 are read before its
    settle (so that the next claim travels with it). The ledger failing at that read must not
    skip the settle: message 100 is settled (retried in place if need be), never run again."""
    from backend.errors import StoreError

    backend.subscriptions.subscribe("payment", "order.paid")
    backend.declare()
    backend.emit_many([("order.paid", {"n": i}) for i in range(150)])
    backend.emitter.flush()
    real = backend.ledger.by_seqs
    failed: list[int] = []

    def by_seqs(actor: str, lane: int, seqs):  # type: ignore[no-untyped-def]
        seqs = list(seqs)
        if seqs and seqs[0] == 101 and not failed:
            failed.append(101)
            raise StoreError("injected: ledger unreachable at the read-ahead")
        return real(actor, lane, seqs)

    monkeypatch.setattr(backend.ledger, "by_seqs", by_seqs)
    rec = Recorder()
    stats = _runtime(backend, {"payment": rec}).run(drain=True, timeout=300)
    assert failed == [101]
    assert rec.seqs() == list(range(1, 151))  # in order, each once: 100 was not run again
    assert (stats["payment"].processed, stats["payment"].errors) == (150, 0)
    assert backend.ledger.status_counts() == {"payment": {"done": 150}}


def test_pipeline_a_long_handler_keeps_its_claim_and_its_connection_served_then_the_queue_drains_in_order(
        backend: Backend) -> None:
    """Handlers run on the worker's own thread; one that runs for several leases is tended by the
    process's tender thread: its lease keeps moving (another owner cannot claim it), its broker
    connection is served (messages emitted meanwhile arrive into the worker's buffer), and once
    it returns the rest runs after it, in order, each once."""
    from datetime import timedelta

    from backend.ledger import as_aware

    settings = backend.settings.with_(claim_lease=1.0)
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    first = backend.emit_event("x", {"i": 0})[0]
    release = threading.Event()
    calls: list[tuple[int, str]] = []

    def handler(message: Message) -> None:
        calls.append((message.payload["i"], threading.current_thread().name))
        if message.payload["i"] == 0:
            assert release.wait(30)

    reg = Registry()
    reg.register("payment", handler)
    runtime = Runtime(settings, backend.ledger, reg).start()
    try:
        wait_for(lambda: calls, what="the first handler call")
        leases = [as_aware(backend.ledger.message(first)["lease_until"])]
        backend.emit_many([("x", {"i": i}) for i in range(1, 6)])
        worker = runtime.workers["payment"]
        wait_for(lambda: worker.consumer is not None and worker.consumer.buffered() == 5, timeout=10,
                 what="the messages emitted during the handler delivered into the worker's buffer")
        for _ in range(3):  # three leases long
            release.wait(1.0)
            leases.append(as_aware(backend.ledger.message(first)["lease_until"]))
            assert backend.ledger.claim(backend.ledger.message(first), "intruder", 30.0) is None
        assert leases[-1] - leases[0] >= timedelta(seconds=2), leases
        assert [i for i, _ in calls] == [0]
        release.set()
        wait_for(lambda: len(calls) == 6, what="the rest after the long handler")
    finally:
        release.set()
        runtime.stop()
    assert calls == [(i, "actor-payment") for i in range(6)]
    assert backend.ledger.status_counts("payment") == {"payment": {"done": 6}}


def test_pipeline_each_event_of_a_batch_gets_its_own_event_id_and_correlation_id_unless_given(backend: Backend) -> None:
    """emit_many draws the ids it makes up from one read of the random source: every event still
    gets its own (version 4 UUIDs), shared by its messages to every subscriber, and a given
    correlation id or idempotency key is kept."""
    import uuid

    from backend.emit import Event
    from backend.ledger import new_event_ids

    ids = new_event_ids(500)
    assert len(set(ids)) == 500 and all(uuid.UUID(i).version == 4 and len(i) == 32 for i in ids)
    assert new_event_ids(0) == []
    backend.subscriptions.subscribe("payment", "x")
    backend.subscriptions.subscribe("shipping", "x")
    backend.declare()
    out = backend.emit_many([("x", {"i": 0}), Event("x", {"i": 1}, correlation_id="given", idempotency_key="key-1"),
                             ("x", {"i": 2})])
    docs = [[backend.ledger.message(mid) for mid in mids] for mids in out]
    assert [len(d) for d in docs] == [2, 2, 2]
    for pair in docs:  # one event: the same ids on both subscribers' messages
        assert pair[0]["event_id"] == pair[1]["event_id"] and pair[0]["correlation_id"] == pair[1]["correlation_id"]
    assert (docs[1][0]["correlation_id"], docs[1][0]["event_id"]) == ("given", "key-1")
    made = [docs[0][0]["event_id"], docs[0][0]["correlation_id"], docs[2][0]["event_id"], docs[2][0]["correlation_id"]]
    assert len(set(made)) == 4 and all(uuid.UUID(i).version == 4 for i in made)


def test_pipeline_failure_blocks_only_that_actor_until_edit_and_replay(backend: Backend) -> None:
    subs = backend.subscriptions
    subs.actor("payment", schema={"type": "object", "required": ["n"]})
    for actor in ("payment", "notification", "availability"):
        subs.subscribe(actor, "tour.booked")
    backend.declare()
    for i in range(30):
        backend.emit_event("tour.booked", {"n": i, "amount": None if i == 10 else 5})
    pay = Recorder(fail_when=lambda m: m.payload.get("amount") is None)
    notif, avail = Recorder(), Recorder()
    rt = _runtime(backend, {"payment": pay, "notification": notif, "availability": avail})
    rt.run(drain=True, timeout=120)
    # The failing message k=10 was tried once; k+1 never reached the handler
    assert [p["n"] for p in pay.payloads()] == list(range(11))
    assert [p["n"] for p in notif.payloads()] == list(range(30))
    assert [p["n"] for p in avail.payloads()] == list(range(30))
    actor = backend.ledger.actor("payment")
    failed_id = actor["blocked"]["message_id"]
    failed = backend.ledger.message(failed_id)
    assert failed["status"] == "failed" and failed["seq"] == 11
    assert failed["last_error"]["type"] == "ValueError" and "Traceback" in failed["last_error"]["traceback"]
    # Running again while blocked processes nothing more
    rt2 = _runtime(backend, {"payment": pay})
    rt2.run(drain=True, timeout=60)
    assert len(pay.calls) == 11
    # When the operator fixes the payload in place and replays it
    ops = backend.operations
    edited = ops.edit(failed_id, {"n": 10, "amount": 42}, by="alice")
    assert edited["version"] == 2 and '"amount": 42' in edited["history"][0]["diff"]
    ops.replay(failed_id, by="alice")
    _runtime(backend, {"payment": pay}).run(drain=True, timeout=120)
    # Then the fixed message runs first, the rest follows in order, the actor is unblocked
    assert [p["n"] for p in pay.payloads()] == list(range(11)) + list(range(10, 30))
    assert pay.payloads()[11] == {"n": 10, "amount": 42}
    assert backend.ledger.actor("payment")["blocked"] is None
    assert backend.ledger.message(failed_id)["status"] == "done"
    actions = [e["action"] for e in backend.audit.find(actor="payment")[0]]
    assert actions == ["replay", "edit"]


def test_pipeline_cancel_unblocks_and_leaves_a_tombstone(backend: Backend) -> None:
    backend.subscriptions.subscribe("chat-bob", "chat.message")
    backend.declare()
    for i in range(6):
        backend.emit_event("chat.message", {"i": i, "bad": i == 2})
    rec = Recorder(fail_when=lambda m: m.payload["bad"])
    _runtime(backend, {"chat-bob": rec}).run(drain=True, timeout=60)
    blocked = backend.ledger.actor("chat-bob")["blocked"]
    backend.operations.cancel(blocked["message_id"], by="op", reason="spam")
    _runtime(backend, {"chat-bob": rec}).run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == [0, 1, 2, 3, 4, 5]
    tomb = backend.ledger.message(blocked["message_id"])
    assert tomb["status"] == "cancelled" and tomb["cancelled"]["reason"] == "spam"
    assert backend.ledger.actor("chat-bob")["blocked"] is None


def test_pipeline_replay_that_fails_again_keeps_the_actor_blocked(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    backend.emit_event("x", {"ok": False})
    backend.emit_event("x", {"ok": True})
    rec = Recorder(fail_when=lambda m: not m.payload["ok"])
    _runtime(backend, {"payment": rec}).run(drain=True, timeout=60)
    first = backend.ledger.actor("payment")["blocked"]
    backend.operations.replay(first["message_id"], by="op")
    _runtime(backend, {"payment": rec}).run(drain=True, timeout=60)
    again = backend.ledger.actor("payment")["blocked"]
    assert again["message_id"] == first["message_id"] and again["since"] == first["since"]
    doc = backend.ledger.message(first["message_id"])
    assert doc["attempts"] == 2 and [a["outcome"] for a in doc["attempt_log"]] == ["failed", "failed"]
    assert [p["ok"] for p in rec.payloads()] == [False, False]


def test_pipeline_transient_errors_are_retried_in_place(backend: Backend) -> None:
    backend.subscriptions.subscribe("inventory", "stock")
    backend.declare()
    for i in range(5):
        backend.emit_event("stock", {"i": i})
    seen: list[int] = []
    failures = {2: 2}  # message 2 fails twice with a transient error, then succeeds

    def handler(m):
        from backend.errors import TransientError

        seen.append(m.payload["i"])
        if failures.get(m.payload["i"], 0) > 0:
            failures[m.payload["i"]] -= 1
            raise TransientError("503")

    _runtime(backend, {"inventory": handler}).run(drain=True, timeout=60)
    assert seen == [0, 1, 2, 2, 2, 3, 4]
    doc = backend.ledger.find(actor="inventory", event="stock")[0][2]
    assert doc["status"] == "done" and doc["attempts"] == 3
    assert [a["outcome"] for a in doc["attempt_log"]] == ["transient", "transient", "done"]


def test_pipeline_transient_retries_exhausted_block_the_actor(backend: Backend) -> None:
    from backend.errors import TransientError

    backend.subscriptions.subscribe("inventory", "stock")
    backend.declare()
    backend.emit_event("stock", {"i": 0})
    backend.emit_event("stock", {"i": 1})
    calls: list[int] = []

    def handler(m):
        calls.append(m.payload["i"])
        raise TransientError("still down")

    settings = backend.settings.with_(transient_retries=2)
    reg = Registry()
    reg.register("inventory", handler)
    Runtime(settings, backend.ledger, reg).run(drain=True, timeout=60)
    assert calls == [0, 0, 0]
    assert backend.ledger.actor("inventory")["blocked"]["error"]["type"] == "TransientError"


def test_pipeline_pause_stops_within_seconds_and_resume_restarts(backend: Backend) -> None:
    backend.subscriptions.subscribe("analytics", "tick")
    backend.declare()
    rec = Recorder()
    rt = _runtime(backend, {"analytics": rec})
    rt.start()
    try:
        backend.emit_event("tick", {"i": 0})
        wait_for(lambda: len(rec.calls) == 1, what="first message processed")
        backend.operations.pause("analytics", by="op", reason="maintenance of the analytics DB")
        # give the runtime time to see the pause (poll interval 0.1 s in tests)
        wait_for(lambda: not rt.workers["analytics"].consumer.is_open, what="consumer released")
        for i in range(1, 6):
            backend.emit_event("tick", {"i": i})
        # the queue keeps filling while paused; nothing is processed
        wait_for(lambda: backend.ledger.status_counts("analytics")["analytics"].get("queued") == 5, what="queued while paused")
        assert len(rec.calls) == 1
        backend.operations.resume("analytics", by="op")
        wait_for(lambda: len(rec.calls) == 6, what="drained after resume")
        assert [p["i"] for p in rec.payloads()] == list(range(6))
    finally:
        rt.stop()
    assert [e["action"] for e in backend.audit.find(actor="analytics")[0]] == ["resume", "pause"]


def test_pipeline_broker_unreachable_emit_returns_and_relay_delivers_in_order(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "order.paid")
    backend.declare()
    backend.emit_event("order.paid", {"i": 0})
    # Given a backend whose broker address is dead (same ledger)
    dead = backend.settings.with_(amqp_urls=("amqp://guest:guest@127.0.0.1:9/%2F",), confirm_timeout=0.5)
    down = Backend(dead, store=backend.store, subscriptions=backend.subscriptions)
    ids = [down.emit_event("order.paid", {"i": i}) for i in range(1, 6)]
    # When emit_event returns, the messages are stored and pending
    assert all(backend.ledger.message(i[0])["status"] == "pending" for i in ids)
    # A message emitted after the broker came back overtakes them on the broker...
    backend.emit_event("order.paid", {"i": 6})
    rec = Recorder()
    # ...but the connector still processes in emission order (it fills the gap from the ledger)
    _runtime(backend, {"payment": rec}).run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == list(range(7))
    # and the relay, run later, publishes the pending ones: the duplicates are acked, not re-run
    from backend.relay import Relay

    assert Relay(backend.settings, backend.ledger).run_once(min_age=0) == 0  # already done, nothing pending
    down.close()


def test_pipeline_relay_publishes_pending_messages_in_order(backend: Backend) -> None:
    from backend.relay import Relay

    backend.subscriptions.subscribe("shipping", "order.created")
    backend.declare()
    dead = backend.settings.with_(amqp_urls=("amqp://guest:guest@127.0.0.1:9/%2F",), confirm_timeout=0.5)
    down = Backend(dead, store=backend.store, subscriptions=backend.subscriptions)
    for i in range(50):
        down.emit_event("order.created", {"i": i})
    assert backend.ledger.status_counts("shipping")["shipping"] == {"pending": 50}
    relay = Relay(backend.settings, backend.ledger)
    assert relay.run_once(min_age=0) == 50
    relay.close()
    assert backend.ledger.status_counts("shipping")["shipping"] == {"queued": 50}
    rec = Recorder()
    _runtime(backend, {"shipping": rec}).run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == list(range(50))
    assert rt_stats_ok(rec)
    down.close()


def rt_stats_ok(rec: Recorder) -> bool:
    return len({m.id for m in rec.calls}) == len(rec.calls)


def test_pipeline_duplicate_publish_is_acked_without_calling_the_handler(backend: Backend) -> None:
    from backend.relay import Relay
    from backend.values import Envelope

    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    ids = [backend.emit_event("x", {"i": i})[0] for i in range(3)]
    # the same envelopes published a second time (as after a lost confirm)
    docs = [backend.ledger.message(i) for i in ids]
    relay = Relay(backend.settings, backend.ledger)
    relay.publisher.publish([Envelope(d["_id"], d["actor"], d["seq"], d["event"]) for d in docs], {})
    relay.close()
    rec = Recorder()
    rt = _runtime(backend, {"payment": rec})
    stats = rt.run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == [0, 1, 2]
    assert stats["payment"].skipped == 3


def test_pipeline_malformed_delivery_is_dead_lettered_without_blocking(backend: Backend) -> None:
    from backend.broker import connect

    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    backend.emit_event("x", {"i": 0})
    conn = connect(backend.settings, "test-intruder")
    ch = conn.channel()
    ch.basic_publish(backend.settings.exchange, backend.settings.queue_name("payment"), b"not json")
    conn.close()
    backend.emit_event("x", {"i": 1})
    rec = Recorder()
    stats = _runtime(backend, {"payment": rec}).run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == [0, 1]
    assert stats["payment"].dead_lettered == 1
    assert backend.ledger.actor("payment")["blocked"] is None


def test_pipeline_concurrent_emitters_keep_sequence_order_per_actor(backend: Backend) -> None:
    backend.subscriptions.subscribe("analytics", "e")
    backend.declare()
    errors: list[BaseException] = []

    def emit(tag: str) -> None:
        try:
            for i in range(100):
                backend.emit_event("e", {"t": tag, "i": i})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=emit, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rec = Recorder()
    _runtime(backend, {"analytics": rec}).run(drain=True, timeout=120)
    assert rec.seqs() == list(range(1, 301))
    for tag in "abc":
        assert [p["i"] for p in rec.payloads() if p["t"] == tag] == list(range(100))


def test_pipeline_sequence_gap_is_tombstoned_after_grace(backend: Backend) -> None:
    emit_around_a_gap(backend)
    rec = Recorder()
    _runtime(backend, {"payment": rec}).run(drain=True, timeout=60)
    assert [p["i"] for p in rec.payloads()] == [0, 2]
    tomb = backend.ledger.find(actor="payment", status="cancelled")[0]
    assert [t["seq"] for t in tomb] == [2] and tomb[0]["cancelled"]["by"] == "system"


def test_pipeline_subscription_filters_on_payload_fields(backend: Backend) -> None:
    subs = backend.subscriptions
    subs.subscribe("shipping", "order.created", where={"country": ["FR", "BE"]})
    subs.subscribe("analytics", "order.created")
    backend.declare()
    assert len(backend.emit_event("order.created", {"country": "FR"})) == 2
    assert len(backend.emit_event("order.created", {"country": "US"})) == 1
    assert backend.emit_event("nobody.listens", {}) == []


def test_pipeline_operations_are_idempotent_and_refuse_wrong_states(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    mid = backend.emit_event("x", {"i": 0})[0]
    backend.emitter.flush()
    ops = backend.operations
    ops.pause("payment", "op", "r")
    ops.pause("payment", "op", "r")
    assert backend.ledger.actor("payment")["paused"]["by"] == "op"
    ops.resume("payment", "op")
    ops.resume("payment", "op")
    queued = backend.ledger.message(mid)
    with pytest.raises(Conflict):
        ops.replay(mid, "op")  # queued, not failed
    assert backend.ledger.message(mid) == queued
    _runtime(backend, {"payment": Recorder()}).run(drain=True, timeout=60)
    before = backend.ledger.message(mid)
    with pytest.raises(Conflict):
        ops.edit(mid, {"i": 1}, "op")  # done
    with pytest.raises(Conflict):
        ops.cancel(mid, "op", "no")
    assert backend.ledger.message(mid) == before
    changed = [e["changed"] for e in backend.audit.find(action="pause")[0]]
    assert sorted(changed) == [False, True]


def test_pipeline_edit_refused_by_schema_leaves_the_ledger_unchanged(backend: Backend) -> None:
    backend.subscriptions.actor("payment", schema={"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]})
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    mid = backend.emit_event("x", {"amount": 1})[0]
    backend.emitter.flush()  # the publish confirm is recorded off the caller's path
    before = backend.ledger.message(mid)
    with pytest.raises(SchemaViolation) as err:
        backend.operations.edit(mid, {"amount": "ten"}, "op")
    assert err.value.details[0]["path"] == "$.amount"
    assert backend.ledger.message(mid) == before
    assert backend.ledger.message(mid)["status"] == Status.QUEUED.value


def test_pipeline_publish_mark_is_recorded_on_a_message_a_fast_consumer_already_ran(backend: Backend) -> None:
    """The console showed "Published: -" on messages whose connector had run them before the
    emitter recorded the broker's confirm: the mark must land whatever the status has become."""
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    ledger = backend.ledger
    seq = ledger.allocate("payment")
    ledger.insert([ledger.new_message("payment", seq, "x", {"i": 0}, None)])
    doc = ledger.message(f"payment.0.{seq}")
    held = ledger.claim(doc, "fast-consumer", 30)
    assert held is not None and ledger.settle(held, "fast-consumer")
    ledger.mark_published([doc["_id"]])  # the confirm is recorded after the message was done
    after = ledger.message(doc["_id"])
    assert after["status"] == Status.DONE.value and after["published_at"] is not None
    # And end to end: a live connector and a burst of events, every message shows its publish.
    rt = _runtime(backend, {"payment": Recorder()})
    rt.start()
    try:
        ids = [backend.emit_event("x", {"i": i})[0] for i in range(1, 31)]
        wait_for(lambda: all(ledger.message(i)["status"] == Status.DONE.value for i in ids), what="the burst processed")
        backend.emitter.flush()
        assert all(ledger.message(i)["published_at"] is not None for i in ids)
    finally:
        rt.stop()
