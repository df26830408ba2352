"""Every ledger write of every transition, made to fail, to be applied but answered with an
error, or to be the last thing a process does, on the real broker (see tests/crash_points.py for
the harness and the invariants). The number of points covered is printed at the end of the run
and recorded in docs/delivery.md."""
from __future__ import annotations

from typing import Any

import pytest

from backend.errors import Conflict
from backend.relay import Relay
from backend.settings import Settings
from backend.store import FaultPlan
from connectors.runtime import Runtime
from tests.conftest import ALL_FLAVORS
from tests.crash_points import Coverage, Scenario, World, count_writes, run_point

PLAIN = {"payment": {}}
KEYED = {"dossiers": {"keyed": True, "lanes": 1, "subs": [{"events": "x.#", "key": "k"}]}}
KEYLESS = {"dossiers": {"keyed": True, "lanes": 1, "subs": [{"events": "x.keyed", "key": "k"}, {"events": "x.plain"}]}}
THREE = {"payment": {}, "notification": {}, "inventory": {}}
COVERAGE = Coverage()


def _ids(world: World, actor: str) -> list[str]:
    return [d["_id"] for d in world.backend.ledger.messages.find({"actor": actor, "gap": False}).sort("seq", 1)]


def _emit_plain(world: World, bad: tuple[int, ...] = ()) -> None:
    world.emit([("x.e", {"i": i, "bad": i in bad}, f"e{i}") for i in range(3)])


def _emit_keyed(world: World) -> None:
    world.emit([("x.e", {"k": k, "i": i, "bad": (k, i) == ("A", 1)}, f"{k}{i}")
                for k, i in (("A", 0), ("A", 1), ("B", 0), ("A", 2), ("B", 1))])


def _blocked_plain(world: World) -> None:
    _emit_plain(world, bad=(1,))
    world.drain()


def _blocked_keyed(world: World) -> None:
    _emit_keyed(world)
    world.drain()


def _second(world: World, actor: str) -> str:
    return _ids(world, actor)[1]


def _fix(world: World, actor: str, mid: str, payload: dict[str, Any]) -> None:
    world.operations().edit(mid, payload, "op")


def _retry(action: Any) -> None:
    """What an operator does after an error: try again; 'already done' is an answer."""
    try:
        action()
    except Conflict:
        pass


def _replay_and_drain(actor: str, fix: dict[str, Any] | None = None) -> Any:
    def phase(world: World, plan: FaultPlan) -> None:
        world.operations(plan).replay(_second(world, actor), "op")
        world.drain(plan)
    return phase


def _recover_replay(actor: str) -> Any:
    def recover(world: World) -> None:
        _retry(lambda: world.operations().replay(_second(world, actor), "op"))
        world.drain()
    return recover


def _cancel_and_drain(actor: str) -> Any:
    def phase(world: World, plan: FaultPlan) -> None:
        world.operations(plan).cancel(_second(world, actor), "op", "wrong data")
        world.drain(plan)
    return phase


def _recover_cancel(actor: str) -> Any:
    def recover(world: World) -> None:
        _retry(lambda: world.operations().cancel(_second(world, actor), "op", "wrong data"))
        world.drain()
    return recover


def _pending_for_relay(world: World) -> None:
    ledger = world.backend.ledger
    first = ledger.allocate("payment", 3)
    ledger.insert([ledger.new_message("payment", first + i, "x.e", {"i": i}, None, event_id=f"e{i}") for i in range(3)])
    world.returned.update({f"e{i}": [f"payment.0.{first + i}"] for i in range(3)})


def _beside_active(world: World, plan: FaultPlan) -> None:
    """A drain run (the faulty process) beside the lane's active replica (a healthy one), with
    messages the broker never had (pending) and messages it holds."""
    active = Runtime(world.settings, world.backend.ledger, world.registry).start()
    try:
        _pending_for_relay(world)
        _emit_plain(world)
        world.drain(plan, timeout=30)
    finally:
        active.stop()


SCENARIOS = [
    Scenario("plain-success", PLAIN, lambda w: _emit_plain(w), lambda w, p: w.drain(p), lambda w: w.drain()),
    Scenario("plain-failure", PLAIN, lambda w: _emit_plain(w, bad=(1,)), lambda w, p: w.drain(p), lambda w: w.drain(),
             blocked=lambda w: {_second(w, "payment")}),
    Scenario("plain-edit", PLAIN, _blocked_plain,
             lambda w, p: w.operations(p).edit(_second(w, "payment"), {"i": 1, "bad": False}, "op"),
             lambda w: (_fix(w, "payment", _second(w, "payment"), {"i": 1, "bad": False}),
                        _retry(lambda: w.operations().replay(_second(w, "payment"), "op")), w.drain())),
    Scenario("plain-replay", PLAIN, lambda w: (_blocked_plain(w), _fix(w, "payment", _second(w, "payment"), {"i": 1, "bad": False})),
             _replay_and_drain("payment"), _recover_replay("payment")),
    Scenario("plain-cancel", PLAIN, _blocked_plain, _cancel_and_drain("payment"), _recover_cancel("payment")),
    Scenario("keyed-failure", KEYED, _emit_keyed, lambda w, p: w.drain(p), lambda w: w.drain(),
             blocked=lambda w: {_second(w, "dossiers")}),
    Scenario("keyed-replay", KEYED, lambda w: (_blocked_keyed(w), _fix(w, "dossiers", _second(w, "dossiers"), {"k": "A", "i": 1, "bad": False})),
             _replay_and_drain("dossiers"), _recover_replay("dossiers")),
    Scenario("keyed-cancel", KEYED, _blocked_keyed, _cancel_and_drain("dossiers"), _recover_cancel("dossiers")),
    Scenario("keyed-keyless", KEYLESS,
             lambda w: (w.emit([("x.plain", {"i": 0, "bad": False}, "p0"), ("x.plain", {"i": 1, "bad": True}, "p1"),
                                ("x.keyed", {"k": "A", "i": 2}, "a2"), ("x.plain", {"i": 3, "bad": False}, "p3")]),
                        w.drain(), _fix(w, "dossiers", _second(w, "dossiers"), {"i": 1, "bad": False})),
             _replay_and_drain("dossiers"), _recover_replay("dossiers")),
    Scenario("emit-event", THREE, lambda w: None,
             lambda w, p: w.emit([("x.e", {"i": 0}, "K1")], p),
             lambda w: (w.emit([("x.e", {"i": 0}, "K1")]), w.drain())),
    Scenario("emit-many", THREE, lambda w: None,
             lambda w, p: w.emit([("x.e", {"i": i}, f"K{i}") for i in range(3)], p),
             lambda w: (w.emit([("x.e", {"i": i}, f"K{i}") for i in range(3)]), w.drain())),
    Scenario("relay", PLAIN, _pending_for_relay,
             lambda w, p: Relay(w.settings, w.ledger(p)).run_once(min_age=0),
             lambda w: (Relay(w.settings, w.backend.ledger).run_once(min_age=0), w.drain())),
    Scenario("drain-beside-active", PLAIN, lambda w: None, _beside_active, lambda w: w.drain()),
]


@pytest.fixture
def base(settings: Settings) -> Settings:
    # A short lease so that a dead process's claim ends quickly; a short gap grace so that the
    # numbers a dead emitter reserved close quickly.
    return settings.with_(claim_lease=0.5, gap_grace=1.0, transient_retries=0, drain_idle=0.1)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("flavor", ALL_FLAVORS)
def test_crash_points_every_write_of_every_transition(base: Settings, flavor: str, scenario: Scenario) -> None:
    writes = count_writes(base, flavor, scenario)
    assert writes > 0
    COVERAGE.points[f"{scenario.name}/{flavor}"] = writes
    for k in range(1, writes + 1):
        # Every mode at every point on the MongoDB code path (what production runs); on the
        # embedded store, which differs only by its shortcuts (tests/test_store_contract.py), one
        # mode per point in turn.
        modes = FaultPlan.MODES if flavor != "embedded" else (FaultPlan.MODES[k % len(FaultPlan.MODES)],)
        for mode in modes:
            plan = FaultPlan(at=k, mode=mode)
            world = run_point(base, flavor, scenario, plan)
            world.close()
            COVERAGE.runs += 1
            COVERAGE.hit += plan.hit


def test_crash_points_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Printed with -s, and summed up in docs/delivery.md."""
    total = sum(COVERAGE.points.values())
    with capsys.disabled():
        print(f"\ncrash points: {len(COVERAGE.points)} scenario runs, {total} numbered writes, "
              f"{COVERAGE.runs} faulted runs, {COVERAGE.hit} faults hit")
