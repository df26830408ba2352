"""The ledger defects found by an audit, each reproduced as it was seen, on the real broker, on
the embedded store and on the MongoDB code path (mongomock raising pymongo's own errors)."""
from __future__ import annotations

import json
import logging
import time
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests

from backend.broker import connect
from backend.errors import OutcomeUnknown
from backend.relay import Relay
from backend.settings import Settings
from backend.store import FaultPlan
from backend.values import Status
from connectors.runtime import Runtime
from tests.conftest import API_AUTH, API_URL
from tests.crash_points import World
from tests.helpers import wait_for

LEDGER_FLAVORS = ("embedded", "mongodb-path")
KEYED = {"dossiers": {"keyed": True, "lanes": 1, "subs": [{"events": "x.#", "key": "k"}]}}


@pytest.fixture
def base(settings: Settings) -> Settings:
    return settings.with_(claim_lease=1.0, gap_grace=1.0, transient_retries=0, drain_idle=0.1)


@pytest.fixture
def world_of(base: Settings, ledger_flavor: str):  # type: ignore[no-untyped-def]
    made: list[World] = []

    def make(actors: dict) -> World:
        made.append(World(base, ledger_flavor, actors))
        return made[-1]

    yield make
    for w in made:
        w.close()


def _writes(world_factory, actors, prepare, phase) -> list[str]:  # type: ignore[no-untyped-def]
    """The ledger writes `phase` makes (a dry run on a world of its own)."""
    w = world_factory(actors)
    prepare(w)
    plan = FaultPlan(at=None)
    phase(w, plan)
    return plan.writes


def _ids(world: World, actor: str) -> list[str]:
    return [d["_id"] for d in world.backend.ledger.messages.find({"actor": actor, "gap": False}).sort("seq", 1)]


def _keyed_emits(world: World) -> None:
    world.emit([("x.e", {"k": k, "i": i, "bad": (k, i) == ("A", 1)}, f"{k}{i}")
                for k, i in (("A", 0), ("A", 1), ("B", 0), ("A", 2), ("B", 1))])


def _called(world: World) -> list[tuple[str, int]]:
    return [(c.key, c.seq) for c in world.log.calls]


# 1 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["crash", "unknown", "fail"])
def test_defect_1_keyed_failure_recorded_without_its_key_block_still_holds_the_key(world_of, mode: str) -> None:  # type: ignore[no-untyped-def]
    """The failed message is written, the custody entry is not (the process dies, or the write
    times out): the key still blocks, and its later message does not run."""
    writes = _writes(world_of, KEYED, _keyed_emits, lambda w, p: w.drain(p))
    failed_at = next(i for i, what in enumerate(writes, 1) if what == "lanes.find_one_and_update")  # the custody entry
    w = world_of(KEYED)
    _keyed_emits(w)
    try:
        w.drain(FaultPlan(at=failed_at, mode=mode))
    except BaseException:  # noqa: BLE001 - the dead process
        pass
    w.drain()
    a1 = _ids(w, "dossiers")[1]
    assert w.backend.ledger.message(a1)["status"] == Status.FAILED.value
    assert [b["message_id"] for b in w.backend.ledger.blocks("dossiers")] == [a1]
    assert ("A", 4) not in _called(w), "A's message after the failure ran"
    w.check(crashed=mode == "crash", expect_blocked={a1})


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["cancel", "replay"])
def test_defect_2_keyed_cancel_or_replay_cut_short_converges_when_retried(world_of, action: str) -> None:  # type: ignore[no-untyped-def]
    """The operator's action is written but its answer is lost: retrying converges ("already
    done"), and the key is released with its held message run in order."""
    w = world_of(KEYED)
    _keyed_emits(w)
    w.drain()
    a1 = _ids(w, "dossiers")[1]
    if action == "replay":
        w.operations().edit(a1, {"k": "A", "i": 1, "bad": False}, "op")
    ops = w.operations(FaultPlan(at=1, mode="unknown"))
    do = (lambda o: o.cancel(a1, "op", "wrong dossier")) if action == "cancel" else (lambda o: o.replay(a1, "op"))
    with pytest.raises(OutcomeUnknown):
        do(ops)
    do(w.operations())  # the retry converges
    w.drain()
    assert w.backend.ledger.blocks("dossiers") == []
    assert [s for k, s in _called(w) if k == "A"] == ([1, 2, 4] if action == "cancel" else [1, 2, 2, 4])
    w.check(crashed=False)


# 3 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["cancel", "replay"])
def test_defect_3_keyless_subscription_of_a_keyed_actor_can_be_released(world_of, action: str) -> None:  # type: ignore[no-untyped-def]
    actors = {"dossiers": {"keyed": True, "lanes": 1, "subs": [{"events": "x.keyed", "key": "k"}, {"events": "x.plain"}]}}
    w = world_of(actors)
    w.emit([("x.plain", {"i": 0, "bad": True}, "p0"), ("x.plain", {"i": 1}, "p1"), ("x.keyed", {"k": "A"}, "a2")])
    w.drain()
    first = _ids(w, "dossiers")[0]
    assert [(b["key"], b["message_id"]) for b in w.backend.ledger.blocks("dossiers")] == [("", first)]
    if action == "replay":
        w.operations().edit(first, {"i": 0, "bad": False}, "op")
        w.operations().replay(first, "op")
    else:
        w.operations().cancel(first, "op", "not needed")
    w.drain()
    assert w.backend.ledger.blocks("dossiers") == []
    assert all(w.backend.ledger.message(i)["status"] in ("done", "cancelled") for i in _ids(w, "dossiers"))
    w.check(crashed=False)


# 4 and 5 -----------------------------------------------------------------------------------------
def test_defect_4_a_key_blocked_by_a_drain_run_is_held_by_the_active_replica(world_of) -> None:  # type: ignore[no-untyped-def]
    w = world_of(KEYED)
    active = Runtime(w.settings, w.backend.ledger, w.registry).start()
    try:
        w.emit([("x.e", {"k": "A", "i": 0}, "A0")])
        wait_for(lambda: len(w.log.calls) == 1, what="the active replica running A0")
        # A1 is in the ledger only (never published): a drain run beside the active replica runs
        # it from the ledger; it fails and blocks key A.
        ledger = w.backend.ledger
        seq = ledger.allocate("dossiers")
        ledger.insert([ledger.new_message("dossiers", seq, "x.e", {"k": "A", "i": 1, "bad": True}, None, 0, "A", "A1")])
        w.drain()
        assert [b["key"] for b in ledger.blocks("dossiers")] == ["A"]
        # The active replica then receives A's next message: it is held, not run.
        w.emit([("x.e", {"k": "A", "i": 2}, "A2"), ("x.e", {"k": "B", "i": 0}, "B0")])
        wait_for(lambda: any(c.key == "B" for c in w.log.calls), what="B0 run by the active replica")
        a2 = _ids(w, "dossiers")[2]
        wait_for(lambda: ledger.message(a2)["status"] == Status.HELD.value, what="A2 held")
    finally:
        active.stop()
    assert [c.seq for c in w.log.calls if c.key == "A"] == [1, 2]


def test_defect_5_a_key_released_by_a_drain_run_is_seen_by_the_active_replica(world_of) -> None:  # type: ignore[no-untyped-def]
    w = world_of(KEYED)
    _keyed_emits(w)
    w.drain()  # key A blocked on A1, A2 held
    a1 = _ids(w, "dossiers")[1]
    active = Runtime(w.settings, w.backend.ledger, w.registry).start()
    try:
        w.emit([("x.e", {"k": "B", "i": 2}, "B2")])
        wait_for(lambda: sum(c.key == "B" for c in w.log.calls) == 3, what="the active replica serving B")
        w.operations().edit(a1, {"k": "A", "i": 1, "bad": False}, "op")
        w.operations().replay(a1, "op")
        w.drain()  # a drain run beside the active replica carries the replay out and releases A
        w.emit([("x.e", {"k": "A", "i": 3}, "A3")])
        a3 = _ids(w, "dossiers")[-1]
        wait_for(lambda: w.backend.ledger.message(a3)["status"] == Status.DONE.value, what="A3 run by the active replica")
    finally:
        active.stop()
    assert [c.seq for c in w.log.calls if c.key == "A" and c.ok] == [1, 2, 4, 7]
    w.check(crashed=False)


# 6 ------------------------------------------------------------------------------------------
def test_defect_6_a_late_emitter_meeting_a_tombstone_stores_for_every_subscriber(world_of) -> None:  # type: ignore[no-untyped-def]
    """On MongoDB an ordered insert refused by a unique index raises BulkWriteError (11000): the
    emitter takes new numbers for what was refused and stores the event for both subscribers."""
    w = world_of({"payment": {}, "notification": {}})
    ledger = w.backend.ledger
    nxt = ledger.lane("notification")["next"]
    ledger.close_gaps("notification", 0, [nxt, nxt + 1], "a connector closed them: the emitter was late")
    [ids] = w.emit([("x.e", {"i": 0}, "E1")])
    assert sorted(i.split(".")[0] for i in ids) == ["notification", "payment"]
    assert ledger.message(next(i for i in ids if i.startswith("notification")))["seq"] == nxt + 2
    w.drain()
    w.check(crashed=False)


# 7 ------------------------------------------------------------------------------------------
def test_defect_7_emit_does_not_raise_once_stored_and_a_retry_stores_nothing_twice(world_of) -> None:  # type: ignore[no-untyped-def]
    w = world_of({"payment": {}, "notification": {}})
    writes = _writes(world_of, {"payment": {}, "notification": {}}, lambda _w: None,
                     lambda x, p: x.emit([("x.e", {"i": 0}, "E1")], p))
    marks = [i for i, what in enumerate(writes, 1) if what == "messages.update_many"]
    assert marks, writes
    for at in marks:
        [ids] = w.emit([("x.e", {"i": at}, f"E{at}")], FaultPlan(at=at, mode="fail"))
        assert len(ids) == 2
        assert w.emit([("x.e", {"i": at}, f"E{at}")]) == [ids]  # the retry returns the same ids
    w.drain()
    w.check(crashed=False)


# 8 ------------------------------------------------------------------------------------------
def test_defect_8_consecutive_missing_numbers_close_together_one_grace_after_their_reservation(
        world_of, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    w = world_of({"payment": {}})
    ledger = w.backend.ledger
    ledger.allocate("payment", 8)  # an emitter killed between reserving 8 numbers and storing them
    time.sleep(w.settings.gap_grace + 0.2)  # the reservation is older than the grace period...
    w.emit([("x.e", {"i": 9}, "E9")])
    with caplog.at_level(logging.INFO, logger="connectors.cursor"):
        w.drain()
    # ...so the worker closed all 8 at once, without waiting a grace period of its own.
    gaps = list(ledger.messages.find({"actor": "payment", "gap": True}))
    assert sorted(d["seq"] for d in gaps) == list(range(1, 9))
    assert len({d["cancelled"]["at"] for d in gaps}) == 1, "closed in one write"
    assert not [r for r in caplog.records if "waiting for sequence" in r.getMessage()]
    assert [c.seq for c in w.log.calls] == [9]
    w.check(crashed=False)


# 9 ------------------------------------------------------------------------------------------
def test_defect_9_one_actor_refused_by_the_broker_does_not_hold_back_the_others(world_of) -> None:  # type: ignore[no-untyped-def]
    w = world_of({"payment": {}, "notification": {}})
    vhost = quote(unquote(urlsplit(w.settings.amqp_urls[0]).path[1:]) or "/", safe="")
    queue = w.settings.queue_name("payment")
    requests.delete(f"{API_URL}/api/queues/{vhost}/{quote(queue, safe='')}", auth=API_AUTH, timeout=10)
    requests.put(f"{API_URL}/api/queues/{vhost}/{quote(queue, safe='')}", auth=API_AUTH, timeout=10,
                 json={"durable": True, "arguments": {"x-queue-type": "classic"}}).raise_for_status()
    [ids] = w.emit([("x.e", {"i": 0}, "E0")])
    ledger = w.backend.ledger
    by_actor = {i.split(".")[0]: i for i in ids}
    assert ledger.message(by_actor["notification"])["published_at"] is not None
    assert ledger.message(by_actor["payment"])["status"] == Status.PENDING.value  # left to the relay
    # The relay: payment stays refused, notification's pending message still goes out.
    seq = ledger.allocate("notification")
    ledger.insert([ledger.new_message("notification", seq, "x.e", {"i": 1}, None, event_id="N1")])
    assert Relay(w.settings, ledger).run_once(min_age=0) == 1
    assert ledger.message(f"notification.0.{seq}")["status"] == Status.QUEUED.value


# 10 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fail", "unknown"])
def test_defect_10_a_lost_done_write_does_not_run_the_handler_again(world_of, mode: str) -> None:  # type: ignore[no-untyped-def]
    w = world_of({"payment": {}})
    w.emit([("x.e", {"i": 0}, "E0")])
    writes = _writes(world_of, {"payment": {}}, lambda x: x.emit([("x.e", {"i": 0}, "E0")]), lambda x, p: x.drain(p))
    settle = writes.index("messages.update_one", 1) + 1  # claim, then the settle
    w.drain(FaultPlan(at=settle, mode=mode))
    w.drain()
    [mid] = _ids(w, "payment")
    assert len(w.log.ok(mid)) == 1 and len(w.log.calls) == 1
    assert w.backend.ledger.message(mid)["status"] == Status.DONE.value
    w.check(crashed=False)


# The deep envelope ----------------------------------------------------------------------------
def test_defect_deep_json_envelope_is_dead_lettered_and_the_worker_lives_on(world_of) -> None:  # type: ignore[no-untyped-def]
    w = world_of({"payment": {}})
    w.emit([("x.e", {"i": 0}, "E0")])
    conn = connect(w.settings, "test-intruder")
    ch = conn.channel()
    ch.basic_publish(w.settings.exchange, w.settings.queue_name("payment"), ("[" * 10_000 + "]" * 10_000).encode())
    ch.basic_publish(w.settings.exchange, w.settings.queue_name("payment"), json.dumps({"id": 5}).encode())
    conn.close()
    w.emit([("x.e", {"i": 1}, "E1")])
    stats = Runtime(w.settings, w.backend.ledger, w.registry).run(drain=True, timeout=60)
    assert stats["payment"].dead_lettered == 2 and stats["payment"].errors == 0
    assert [c.seq for c in w.log.calls] == [1, 2]
    w.check(crashed=False)


def test_defect_a_message_the_worker_cannot_even_read_blocks_its_actor_visibly(world_of) -> None:  # type: ignore[no-untyped-def]
    """A stored message the runtime cannot turn into a handler call (written by hand, without its
    event name) fails like a handler would: the actor is blocked on it, with the error shown."""
    w = world_of({"payment": {}})
    ledger = w.backend.ledger
    seq = ledger.allocate("payment")
    broken = ledger.new_message("payment", seq, "x.e", {"i": 0}, None, event_id="broken")
    del broken["event"]
    ledger.insert([broken])
    w.emit([("x.e", {"i": 1}, "E1")])
    stats = Runtime(w.settings, ledger, w.registry).run(drain=True, timeout=60)
    assert stats["payment"].errors == 0 and w.log.calls == []
    [block] = ledger.blocks("payment")
    assert block["message_id"] == broken["_id"] and block["error"]["type"] == "KeyError"
    w.operations().cancel(broken["_id"], "op", "written by hand")
    w.drain()
    assert [c.seq for c in w.log.calls] == [seq + 1]


def test_defect_an_unexpected_worker_error_is_logged_recorded_on_the_lane_and_survived(
        world_of, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from connectors.cursor import LaneCursor

    w = world_of({"payment": {}})
    w.emit([("x.e", {"i": i}, f"E{i}") for i in range(3)])
    real_fold = LaneCursor.fold
    failures = iter([True])

    def fold(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if next(failures, False):
            raise RuntimeError("a bug in the worker")
        return real_fold(self, *args, **kwargs)

    monkeypatch.setattr(LaneCursor, "fold", fold)
    with caplog.at_level(logging.ERROR, logger="connectors.worker"):
        stats = Runtime(w.settings, w.backend.ledger, w.registry).run(drain=True, timeout=60)
    assert stats["payment"].errors == 1
    assert any("unexpected error" in r.getMessage() and r.exc_info for r in caplog.records)
    recorded = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert recorded and "a bug in the worker" in recorded[0].getMessage()
    assert "worker_error" not in w.backend.ledger.lane("payment"), "shown until the worker recovered"
    assert [c.seq for c in w.log.calls] == [1, 2, 3]
    w.check(crashed=False)
