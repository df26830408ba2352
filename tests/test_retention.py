"""Retention on the real broker: settled messages older than the limit go (archived first when
asked), open ones never, and nothing the runtime needs goes with them."""
from __future__ import annotations

import io
import json
import logging
import time

import pytest

from backend.app import Backend
from backend.audit import AuditEntry
from backend.errors import StoreError
from backend.retention import JsonLinesArchive, Retention
from backend.settings import Settings
from backend.values import Status
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import ALL_FLAVORS
from tests.helpers import Recorder

LEDGER_FLAVORS = ALL_FLAVORS
NOW_ISH = 1e-6  # seconds: "everything settled before now"


def _drain(backend: Backend, actor: str, rec: Recorder, settings: Settings | None = None) -> dict:
    reg = Registry()
    reg.register(actor, rec)
    return Runtime(settings or backend.settings, backend.ledger, reg).run(drain=True, timeout=60)


def _retention(backend: Backend) -> Retention:
    assert backend.store is not None
    return Retention(backend.settings, backend.ledger, backend.store.col("audit"))


def test_retention_removes_only_settled_messages_older_than_the_limit(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    ids = [backend.emit_event("x", {"i": i, "bad": i == 5})[0] for i in range(10)]
    _drain(backend, "payment", Recorder(fail_when=lambda m: m.payload["bad"]))
    backend.emitter.flush()
    ledger = backend.ledger
    assert [ledger.message(i)["status"] for i in ids[4:7]] == ["done", "failed", "queued"]
    # A limit longer than their age removes nothing.
    assert _retention(backend).sweep_once(older_than=3600).removed == 0
    report = _retention(backend).sweep_once(older_than=NOW_ISH)
    assert report.removed == 5
    left = [d["_id"] for d in ledger.messages.find({"actor": "payment"}).sort("seq", 1)]
    assert left == ids[5:], "only the settled ones below the failed head went"
    assert ledger.lane("payment")["floor"] == 6
    # The counters keep what was removed; the failed head still blocks.
    assert ledger.status_counts("payment")["payment"] == {"done": 5, "failed": 1, "queued": 4}
    assert ledger.actor("payment")["blocked"]["message_id"] == ids[5]


def test_retention_keeps_a_keys_custody_and_everything_after_its_oldest_entry(backend: Backend) -> None:
    backend.subscriptions.actor("dossiers", lanes=1)
    backend.subscriptions.subscribe("dossiers", "x", ordering_key="k")
    backend.declare()
    ids = [backend.emit_event("x", {"k": k, "bad": k == "A" and i == 1})[0] for i, k in enumerate("BABBA")]
    _drain(backend, "dossiers", Recorder(fail_when=lambda m: m.payload["bad"]))
    assert _retention(backend).sweep_once(older_than=NOW_ISH).removed == 1  # B0, before A's failure
    left = {d["_id"] for d in backend.ledger.messages.find({"actor": "dossiers"})}
    assert left == set(ids[1:])
    assert [b["message_id"] for b in backend.ledger.blocks("dossiers")] == [ids[1]]


def test_retention_a_connector_restarted_after_retention_resumes_without_gap_waits(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    for i in range(20):
        backend.emit_event("x", {"i": i})
    _drain(backend, "payment", Recorder())
    assert _retention(backend).sweep_once(older_than=NOW_ISH).removed == 20
    for i in range(20, 25):
        backend.emit_event("x", {"i": i})
    rec = Recorder()
    with caplog.at_level(logging.INFO):
        stats = _drain(backend, "payment", rec)
    assert [p["i"] for p in rec.payloads()] == list(range(20, 25))
    assert (stats["payment"].from_ledger, stats["payment"].skipped) == (0, 0)
    assert not [r for r in caplog.records if "waiting for sequence" in r.getMessage() or "gap" in r.getMessage()]
    assert backend.ledger.messages.count_documents({"gap": True}) == 0
    assert backend.ledger.status_counts("payment")["payment"] == {"done": 25}


def test_retention_archives_before_removing_and_removes_nothing_if_the_archive_fails(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    ids = [backend.emit_event("x", {"i": i}, correlation_id=f"order-{i}")[0] for i in range(3)]
    _drain(backend, "payment", Recorder())

    def broken(docs: list[dict]) -> None:
        raise StoreError("disk full")

    with pytest.raises(StoreError):
        _retention(backend).sweep_once(older_than=NOW_ISH, archive=broken)
    assert backend.ledger.messages.count_documents({"actor": "payment"}) == 3
    out = io.StringIO()
    archive = JsonLinesArchive(out)
    assert _retention(backend).sweep_once(older_than=NOW_ISH, archive=archive).removed == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["_id"], d["status"], d["correlation_id"]) for d in lines] == [(i, Status.DONE.value, f"order-{n}") for n, i in enumerate(ids)]
    assert all("T" in d["created_at"] for d in lines) and archive.written == 3


def test_retention_of_the_audit_trail_has_its_own_limit(backend: Backend) -> None:
    backend.audit.record(AuditEntry("op", "pause", actor="payment"))
    assert _retention(backend).sweep_once(older_than=0, audit_older_than=3600).audit_removed == 0
    time.sleep(0.01)  # the entry's time has millisecond precision
    assert _retention(backend).sweep_once(older_than=0, audit_older_than=NOW_ISH).audit_removed == 1
    assert backend.audit.find()[1] == 0


def test_retention_the_console_says_how_long_settled_messages_are_kept_and_how_many_went(
        backend: Backend, viewer) -> None:  # type: ignore[no-untyped-def]
    backend.subscriptions.subscribe("payment", "x")
    backend.declare()
    for i in range(4):
        backend.emit_event("x", {"i": i})
    _drain(backend, "payment", Recorder())
    assert _retention(backend).sweep_once(older_than=NOW_ISH).removed == 4
    backend.ledger.lanes.col.update_one({"_id": "payment/0"}, {"$set": {"worker_error": {
        "type": "RuntimeError", "message": "a bug in the worker", "traceback": "", "owner": "host:1", "at": backend.ledger.now()}}})
    data = viewer.get("/api/actors/payment").get_json()
    assert data["retention"] == {"seconds": backend.settings.retention, "audit_seconds": backend.settings.audit_retention,
                                 "removed": 4}
    assert data["counts"]["done"] == 4  # the counters keep what retention removed
    page = viewer.get("/actors/payment").get_data(as_text=True)
    assert "Settled messages are kept 7 d" in page and "4 removed so far" in page
    assert "Worker error on lane 0" in page and "a bug in the worker" in page
