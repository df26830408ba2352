"""The crash-point harness: run a scenario once to number the ledger writes of the phase under
test, then for every write k and every mode

- fail: the write raises and is not applied (pymongo's AutoReconnect: the caller cannot tell),
- unknown: the write is applied, then raises (a timeout after the server applied it),
- crash: the write is applied, then the process dies (nothing it does afterwards happens),

run the scenario again on a fresh queue prefix and database, recover the way a user would (retry
the operator's action, restart the connector, retry the emit with the same idempotency key) and
check the invariants:

- no handler call for a later message of an actor (or of a key) starts before every earlier one
  has succeeded or been cancelled;
- a message is called once, unless a process died holding it (then its attempt log records the
  interrupted attempt);
- every lane ends with nothing open that could run, and nothing is blocked without a failed
  message to show for it; the lane counters match a full recount;
- everything an emit returned exists once per subscriber, with the ids the retried emit returns.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.app import Backend
from backend.audit import AuditLog
from backend.ledger import Ledger
from backend.operations import Operations
from backend.settings import Settings
from backend.store import FaultPlan, ProcessCrash, Store
from backend.values import Message
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import delete_prefixed, ledger_url


@dataclass
class Call:
    id: str
    actor: str
    seq: int
    key: str | None
    version: int
    start: float
    end: float = 0.0
    ok: bool = False


class CallLog:
    """Handlers of every actor record their calls; a payload {"bad": true} fails until edited."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()

    def handler(self, actor: str) -> Callable[[Message], None]:
        def handle(message: Message) -> None:
            call = Call(message.id, actor, message.seq, (message.payload or {}).get("k"), message.version, time.monotonic())
            with self.lock:
                self.calls.append(call)
            bad = isinstance(message.payload, dict) and message.payload.get("bad")
            call.end = time.monotonic()
            if bad:
                raise ValueError(f"cannot handle {message.payload!r}")
            call.ok = True

        return handle

    def ok(self, message_id: str) -> list[Call]:
        return [c for c in self.calls if c.id == message_id and c.ok]


class World:
    """One run of one scenario: its own prefix and database on the real broker."""

    def __init__(self, base: Settings, flavor: str, actors: dict[str, dict[str, Any]]) -> None:
        prefix = "c" + uuid.uuid4().hex[:10]
        self.settings = base.with_(prefix=prefix, mongodb_url=ledger_url(flavor, prefix), mongodb_db=f"db_{prefix}")
        self.backend = Backend(self.settings)
        self.log = CallLog()
        self.actors = actors
        for name, spec in actors.items():
            self.backend.subscriptions.actor(name, lanes=spec.get("lanes"))
            for sub in spec.get("subs", [{}]):
                self.backend.subscriptions.subscribe(name, sub.get("events", "x.#"), ordering_key=sub.get("key"))
        self.backend.declare()
        self.registry = Registry()
        for name in actors:
            self.registry.register(name, self.log.handler(name))
        self.returned: dict[str, list[str]] = {}  # idempotency key -> ids an emit returned

    @property
    def store(self) -> Store:
        assert self.backend.store is not None
        return self.backend.store

    def ledger(self, plan: FaultPlan | None = None) -> Ledger:
        return Ledger(self.store.with_faults(plan)) if plan else self.backend.ledger

    def operations(self, plan: FaultPlan | None = None) -> Operations:
        ledger = self.ledger(plan)
        return Operations(self.settings, ledger, AuditLog(ledger.store))

    def drain(self, plan: FaultPlan | None = None, timeout: float = 60) -> None:
        Runtime(self.settings, self.ledger(plan), self.registry).run(drain=True, timeout=timeout)

    def emit(self, events: list[tuple[str, dict[str, Any], str]], plan: FaultPlan | None = None) -> list[list[str]]:
        """emit_many of (name, payload, idempotency key) through a backend whose ledger has `plan`."""
        from backend.emit import Emitter, Event

        emitter = Emitter(self.settings, self.ledger(plan), self.backend.subscriptions)
        try:
            ids = emitter.emit_many([Event(n, p, None, k) for n, p, k in events])
        finally:
            try:
                emitter.close()
            except ProcessCrash:
                pass
        for (_n, _p, key), got in zip(events, ids, strict=True):
            self.returned[key] = got
        return ids

    def close(self) -> None:
        self.backend.close()
        self.store.drop()
        delete_prefixed(self.settings.prefix)

    # -- invariants ---------------------------------------------------------------------------
    def check(self, crashed: bool, expect_blocked: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        ledger = self.backend.ledger
        docs = {d["_id"]: d for d in ledger.messages.find({})}
        real = {i: d for i, d in docs.items() if not d.get("gap")}
        self._check_order(real)
        for mid, d in real.items():
            ok = self.log.ok(mid)
            if d["status"] == "done":
                interrupted = any(a.get("outcome") == "interrupted" for a in d.get("attempt_log") or [])
                assert len(ok) == 1 or (crashed and interrupted and len(ok) >= 1), (mid, len(ok), d["attempt_log"])
            else:
                assert not ok, f"{mid} is {d['status']} but its handler succeeded"
        # Nothing open could still run; what is blocked shows a failed message.
        blocks = ledger.blocks()
        for b in blocks:
            assert b["status"] == "failed", b
        assert {b["message_id"] for b in blocks} == expect_blocked, (blocks, expect_blocked)
        for d in real.values():
            if d["status"] not in ("done", "cancelled", "failed"):
                key = d.get("key") or ""
                assert any(b["actor"] == d["actor"] and (b["key"] in (None, key)) for b in blocks), f"{d['_id']} {d['status']} and nothing blocks it"
        # The counters match a full recount.
        for lane in ledger.lanes.all():
            mine = [d for d in docs.values() if d["actor"] == lane["actor"] and d["lane"] == lane["lane"] and d["seq"] <= lane["w"]]
            in_custody = {e["s"] for e in lane.get("custody", [])}
            done = sum(1 for d in mine if d["status"] == "done" and d["seq"] not in in_custody)
            cancelled = sum(1 for d in mine if d["status"] == "cancelled" and not d.get("gap") and d["seq"] not in in_custody)
            gaps = sum(1 for d in mine if d.get("gap"))
            assert (lane["counts"]["done"], lane["counts"]["cancelled"], lane["counts"]["gaps"]) == (done, cancelled, gaps), lane
        # Every emit that returned: one message per subscriber, with the ids it returned.
        for key, ids in self.returned.items():
            stored = [d for d in real.values() if d["event_id"] == key]
            assert sorted(d["_id"] for d in stored) == sorted(ids), (key, ids, [d["_id"] for d in stored])

    def _check_order(self, docs: dict[str, dict[str, Any]]) -> None:
        """No call for a later message of a scope before every earlier one succeeded or was cancelled."""
        for call in self.log.calls:
            me = docs.get(call.id)
            assert me is not None, f"handler called for {call.id}, which is not in the ledger"
            for d in docs.values():
                if d["actor"] != me["actor"] or d["lane"] != me["lane"] or d["seq"] >= me["seq"]:
                    continue
                if self.actors[me["actor"]].get("keyed") and (d.get("key") or "") != (me.get("key") or ""):
                    continue
                if d["status"] == "cancelled":
                    continue
                done_before = [c for c in self.log.ok(d["_id"]) if c.end <= call.start]
                assert done_before, f"{call.id} (seq {me['seq']}) called before {d['_id']} (seq {d['seq']}) succeeded"


@dataclass
class Scenario:
    name: str
    actors: dict[str, dict[str, Any]]
    prepare: Callable[[World], None]
    phase: Callable[[World, FaultPlan], None]
    recover: Callable[[World], None]
    blocked: Callable[[World], set[str]] = field(default=lambda w: set())


@dataclass
class Coverage:
    points: dict[str, int] = field(default_factory=dict)  # scenario -> writes numbered
    runs: int = 0
    hit: int = 0


def run_point(base: Settings, flavor: str, sc: Scenario, plan: FaultPlan) -> World:
    world = World(base, flavor, sc.actors)
    try:
        sc.prepare(world)
        try:
            sc.phase(world, plan)
        except ProcessCrash:
            pass
        except Exception:
            if not plan.hit:
                raise
        sc.recover(world)
        world.check(crashed=plan.mode == "crash" and plan.hit, expect_blocked=sc.blocked(world))
    except BaseException:
        world.close()
        raise
    return world


def count_writes(base: Settings, flavor: str, sc: Scenario) -> int:
    plan = FaultPlan(at=None)
    world = run_point(base, flavor, sc, plan)
    world.close()
    return len(plan.writes)
