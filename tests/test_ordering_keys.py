"""Ordering keys: one FIFO per business key inside bounded lanes; a failure blocks only its key."""
from __future__ import annotations

import random

import pytest
import requests

from backend.app import Backend
from backend.errors import ValidationError
from backend.subscriptions import lane_of
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import ALL_FLAVORS, API_AUTH, API_URL
from tests.helpers import Recorder, wait_for

LEDGER_FLAVORS = ALL_FLAVORS


def _run(backend: Backend, actor: str, handler) -> dict:
    reg = Registry()
    reg.register(actor, handler)
    return Runtime(backend.settings, backend.ledger, reg).run(drain=True, timeout=300)


def _declare(backend: Backend, lanes: int = 4) -> None:
    backend.subscriptions.actor("dossiers", lanes=lanes)
    backend.subscriptions.subscribe("dossiers", "dossier.#", ordering_key="dossier_id")
    backend.declare()


def test_ordering_keys_failure_holds_only_its_key_and_replay_releases_it_in_order(backend: Backend) -> None:
    _declare(backend, lanes=2)
    # keys A, B, C interleaved; A's third message fails
    for i in range(10):
        for key in "ABC":
            backend.emit_event("dossier.step", {"dossier_id": key, "i": i, "bad": key == "A" and i == 2})
    rec = Recorder(fail_when=lambda m: m.payload["bad"])
    _run(backend, "dossiers", rec)
    by_key = lambda k: [p["i"] for p in rec.payloads() if p["dossier_id"] == k]  # noqa: E731
    assert by_key("B") == list(range(10)) and by_key("C") == list(range(10))
    assert by_key("A") == [0, 1, 2]
    # A's later messages wait in the ledger, visible as held behind the failed one
    blocked = backend.ledger.blocked_keys("dossiers")
    assert [k["key"] for k in blocked] == ["A"]
    failed_id = blocked[0]["blocked"]["message_id"]
    held = backend.ledger.held("dossiers", "A")
    assert [d["payload"]["i"] for d in held] == list(range(3, 10))
    assert backend.ledger.actor("dossiers")["blocked"] is None  # the actor itself is not blocked
    # more messages for A and B while A is blocked
    backend.emit_event("dossier.step", {"dossier_id": "A", "i": 10, "bad": False})
    backend.emit_event("dossier.step", {"dossier_id": "B", "i": 10, "bad": False})
    _run(backend, "dossiers", rec)
    assert by_key("A") == [0, 1, 2] and by_key("B") == list(range(11))
    # the operator fixes and replays: A's messages run in order, before any newer A message
    backend.operations.edit(failed_id, {"dossier_id": "A", "i": 2, "bad": False}, by="op")
    backend.operations.replay(failed_id, by="op")
    backend.emit_event("dossier.step", {"dossier_id": "A", "i": 11, "bad": False})
    _run(backend, "dossiers", rec)
    assert by_key("A") == [0, 1, 2] + list(range(2, 12))
    assert backend.ledger.blocked_keys("dossiers") == []
    assert backend.ledger.status_counts("dossiers")["dossiers"].get("held", 0) == 0


def test_ordering_keys_cancel_releases_the_held_messages(backend: Backend) -> None:
    _declare(backend, lanes=1)
    for i in range(4):
        backend.emit_event("dossier.step", {"dossier_id": "X", "i": i, "bad": i == 1})
    rec = Recorder(fail_when=lambda m: m.payload["bad"])
    _run(backend, "dossiers", rec)
    failed_id = backend.ledger.blocked_keys("dossiers")[0]["blocked"]["message_id"]
    backend.operations.cancel(failed_id, by="op", reason="wrong dossier")
    _run(backend, "dossiers", rec)
    assert [p["i"] for p in rec.payloads()] == [0, 1, 2, 3]
    assert backend.ledger.message(failed_id)["status"] == "cancelled"
    assert backend.ledger.blocked_keys("dossiers") == []


def test_ordering_keys_failed_replay_keeps_the_key_blocked(backend: Backend) -> None:
    _declare(backend, lanes=1)
    for i in range(3):
        backend.emit_event("dossier.step", {"dossier_id": "X", "i": i, "bad": i == 0})
    rec = Recorder(fail_when=lambda m: m.payload["bad"])
    _run(backend, "dossiers", rec)
    first = backend.ledger.blocked_keys("dossiers")[0]["blocked"]
    backend.operations.replay(first["message_id"], by="op")
    _run(backend, "dossiers", rec)
    again = backend.ledger.blocked_keys("dossiers")[0]["blocked"]
    assert again["message_id"] == first["message_id"] and again["since"] == first["since"]
    assert [p["i"] for p in rec.payloads()] == [0, 0]
    assert len(backend.ledger.held("dossiers", "X")) == 2


@pytest.mark.embedded_only
def test_ordering_keys_10000_keys_keep_per_key_order_with_bounded_queues(backend: Backend) -> None:
    lanes = 4
    _declare(backend, lanes=lanes)
    rng = random.Random(3)
    keys = [f"D{n:05d}" for n in range(10_000)]
    events = []
    counters: dict[str, int] = {}
    # every key once, then 2,000 more messages on random keys: 12,000 messages
    for key in keys + [rng.choice(keys) for _ in range(2000)]:
        counters[key] = counters.get(key, 0) + 1
        events.append(("dossier.step", {"dossier_id": key, "i": counters[key] - 1}))
    for start in range(0, len(events), 1000):
        backend.emit_many(events[start:start + 1000])
    rec = Recorder()
    _run(backend, "dossiers", rec)
    seen: dict[str, list[int]] = {}
    for p in rec.payloads():
        seen.setdefault(p["dossier_id"], []).append(p["i"])
    assert len(rec.calls) == len(events)
    assert all(seen[k] == list(range(counters[k])) for k in keys)
    queues = requests.get(f"{API_URL}/api/queues", auth=API_AUTH, timeout=10, params={"columns": "name"}).json()
    mine = sorted(q["name"] for q in queues if q["name"].startswith(backend.settings.prefix + ".actor."))
    assert len(mine) == lanes
    assert {lane_of(k, lanes) for k in keys} == set(range(lanes))


def test_ordering_keys_lane_is_stable_and_bad_keys_refused(backend: Backend) -> None:
    # crc32 modulo lanes, not the process's salted hash(): the same lane in every process, every run
    assert [lane_of(k, 8) for k in ("dossier-42", "dossier-7", "A")] == [0, 3, 3]
    _declare(backend, lanes=4)
    for payload in ({"no_key": 1}, {"dossier_id": None}, {"dossier_id": {"a": 1}}, {"dossier_id": ""}):
        with pytest.raises(ValidationError):
            backend.emit_event("dossier.step", payload)
    assert backend.ledger.find(actor="dossiers")[1] == 0


def test_ordering_keys_console_shows_blocked_keys(backend: Backend, viewer) -> None:
    _declare(backend, lanes=2)
    for i in range(3):
        backend.emit_event("dossier.step", {"dossier_id": "K<b>1</b>", "i": i, "bad": i == 0})
    backend.emit_event("dossier.step", {"dossier_id": "OK", "i": 0, "bad": False})
    _run(backend, "dossiers", Recorder(fail_when=lambda m: m.payload["bad"]))
    data = viewer.get("/api/actors/dossiers/keys").get_json()
    assert [(k["key"], k["held"]) for k in data["blocked_keys"]] == [("K<b>1</b>", 2)]
    page = viewer.get("/actors/dossiers").get_data(as_text=True)
    assert "1 ordering key(s) blocked" in page and "K&lt;b&gt;1&lt;/b&gt;" in page
    overview = viewer.get("/?blocked=1").get_data(as_text=True)
    assert "1 key(s) blocked" in overview
    assert viewer.get("/api/actors/nobody/keys").status_code == 404


def test_ordering_keys_replay_after_a_connector_restart_does_not_wait_for_the_sweep(backend: Backend) -> None:
    """A restarted connector reads its keyed lane's custody when it starts: a replay of a key
    blocked before the restart runs within a few poll intervals, not at the next sweep
    (FIFOQ_SWEEP_INTERVAL, an hour here)."""
    _declare(backend, lanes=1)
    for i in range(3):
        backend.emit_event("dossier.step", {"dossier_id": "A", "i": i, "bad": i == 0})
    rec = Recorder(fail_when=lambda m: m.payload["bad"])
    _run(backend, "dossiers", rec)
    [blocked] = backend.ledger.blocked_keys("dossiers")
    failed_id = blocked["blocked"]["message_id"]
    assert [p["i"] for p in rec.payloads()] == [0]  # 1 and 2 held behind it
    reg = Registry()
    reg.register("dossiers", rec)
    runtime = Runtime(backend.settings.with_(sweep_interval=3600.0), backend.ledger, reg).start()
    try:
        backend.operations.edit(failed_id, {"dossier_id": "A", "i": 0, "bad": False}, by="op")
        backend.operations.replay(failed_id, by="op")
        wait_for(lambda: [p["i"] for p in rec.payloads() if not p["bad"]] == [0, 1, 2], timeout=30,
                 what="the replayed key to run in order after the restart")
    finally:
        runtime.stop()
    assert backend.ledger.blocked_keys("dossiers") == []
