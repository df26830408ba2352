"""Bad input to emit_event, the operations and the command line: clear errors, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend import ledger_server
from backend.app import Backend
from backend.errors import ConfigError, PayloadTooLarge, SchemaViolation, UnknownActor, UnknownMessage, ValidationError
from backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def declared(backend: Backend) -> Backend:
    subs = backend.subscriptions
    subs.actor("payment", schema={"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}})
    subs.subscribe("payment", "order.paid")
    subs.subscribe("analytics", "order.#")
    backend.declare()
    return backend


def _snapshot(be: Backend) -> tuple:
    """Every message stored and every lane's allocator: what a refused call must leave as it was."""
    messages = sorted(d["_id"] for d in be.ledger.messages.find({}))
    return messages, [(lane["_id"], lane["next"]) for lane in be.ledger.lanes.all()]


@pytest.mark.parametrize(
    "payload, error",
    [
        ({"amount": float("nan")}, ValidationError),
        ({"amount": 1, "when": object()}, ValidationError),
        ({1, 2}, ValidationError),
        ({"amount": 1, "$where": "sleep(1000)"}, ValidationError),
        ({"amount": 1, "big": 2**70}, ValidationError),
        ({"amount": 1, "s": "\ud800"}, ValidationError),
        ({"amount": "ten"}, SchemaViolation),
        ({"no_amount": True}, SchemaViolation),
        ({"amount": 1, "blob": "x" * 300_000}, PayloadTooLarge),
    ],
)
def test_bad_input_emit_refuses_payload_and_writes_nothing(declared: Backend, payload, error) -> None:
    before = _snapshot(declared)
    with pytest.raises(error):
        declared.emit_event("order.paid", payload)
    assert _snapshot(declared) == before


def test_bad_input_emit_refuses_deep_nesting(declared: Backend) -> None:
    deep: dict = {"amount": 1}
    cur = deep
    for _ in range(200):
        cur["x"] = {}
        cur = cur["x"]
    before = _snapshot(declared)
    with pytest.raises(ValidationError, match="nested deeper"):
        declared.emit_event("order.paid", deep)
    assert _snapshot(declared) == before


def test_bad_input_schema_violation_names_actor_and_path(declared: Backend) -> None:
    with pytest.raises(SchemaViolation) as err:
        declared.emit_event("order.paid", {"amount": "ten"})
    assert err.value.details == [{"actor": "payment", "path": "$.amount", "message": "'ten' is not of type 'number'"}]


@pytest.mark.parametrize("name", ["", "a..b", "with space", "x" * 300, None, 42, "a/b"])
def test_bad_input_event_names(declared: Backend, name) -> None:
    with pytest.raises(ValidationError):
        declared.emit_event(name, {"amount": 1})


def test_bad_input_correlation_id(declared: Backend) -> None:
    with pytest.raises(ValidationError):
        declared.emit_event("order.paid", {"amount": 1}, correlation_id="x" * 500)


@pytest.mark.parametrize("actor", ["Payment", "../x", "a/b", "%2F", "a b", "a\x00", "x" * 5000, ""])
def test_bad_input_actor_names_refused(backend: Backend, actor: str) -> None:
    with pytest.raises(ValidationError):
        backend.subscriptions.subscribe(actor, "x")
    with pytest.raises(ValidationError):
        backend.operations.pause(actor, "op", "r")


def test_bad_input_unknown_actor_and_message(declared: Backend) -> None:
    with pytest.raises(UnknownActor):
        declared.operations.pause("nobody", "op", "r")
    for call in (
        lambda: declared.operations.replay("nope", "op"),
        lambda: declared.operations.cancel("nope", "op", "r"),
        lambda: declared.operations.edit("nope", {}, "op"),
        lambda: declared.ledger.message({"$ne": None}),  # operator injection is not an id
    ):
        with pytest.raises(UnknownMessage):
            call()


def test_bad_input_operations_need_a_user_and_a_reason(declared: Backend) -> None:
    mid = declared.emit_event("order.paid", {"amount": 1})[0]
    declared.emitter.flush()
    with pytest.raises(ValidationError):
        declared.operations.pause("payment", "", "r")
    with pytest.raises(ValidationError):
        declared.operations.cancel(mid, "op", "  ")
    with pytest.raises(ValidationError):
        declared.operations.cancel(mid, "op", "r" * 600)
    with pytest.raises(ValidationError, match="invalid Unicode"):
        declared.operations.cancel(mid, "op", "bad \ud800 reason")
    with pytest.raises(ValidationError, match="invalid Unicode"):
        declared.operations.pause("payment", "op\udfff", "r")
    assert declared.ledger.message(mid)["status"] == "queued"


def test_bad_input_invalid_schema_refused_at_declaration(backend: Backend) -> None:
    with pytest.raises(ValidationError, match="invalid JSON Schema"):
        backend.subscriptions.actor("payment", schema={"type": "nonsense"})


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"FIFOQ_QUEUE_TYPE": "stream"}, "FIFOQ_QUEUE_TYPE"),
        ({"AMQP_URL": "http://x"}, "AMQP_URL"),
        ({"FIFOQ_PREFETCH": "many"}, "FIFOQ_PREFETCH"),
        ({"FIFOQ_PREFETCH": "0"}, "FIFOQ_PREFETCH"),
        ({"MONGODB_URL": "postgres://x"}, "MONGODB_URL"),
        ({"FIFOQ_PREFIX": "Bad Prefix"}, "FIFOQ_PREFIX"),
    ],
)
def test_bad_input_settings_fail_fast_naming_the_variable(env: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_cli_operations_through_the_served_ledger(declared: Backend, tmp_path: Path) -> None:
    """The operator CLI against a running system (the embedded ledger served to other processes)."""
    server, url = ledger_server.serve(declared.ledger, audit=declared.audit)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MONGODB_URL=url, FIFOQ_PREFIX=declared.settings.prefix, FIFOQ_OPERATOR="carol")

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "backend", *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60)

    try:
        mid = declared.emit_event("order.paid", {"amount": 1})[0]
        assert cli("pause", "payment", "--reason", "provider outage").returncode == 0
        assert declared.ledger.actor("payment")["paused"]["by"] == "carol"
        out = cli("status")
        assert out.returncode == 0 and "payment" in out.stdout and "paused" in out.stdout
        assert cli("resume", "payment").returncode == 0
        fixed = tmp_path / "fixed.json"
        fixed.write_text(json.dumps({"amount": 2}))
        assert cli("edit", mid, "--file", str(fixed)).returncode == 0
        assert declared.ledger.message(mid)["payload"] == {"amount": 2}
        assert json.loads(cli("show", mid).stdout)["version"] == 2
        # bad input: one line, non-zero exit, nothing changed
        for args, stdin in (
            (("edit", mid, "--file", "-"), "{not json"),
            (("edit", mid, "--file", "-"), '{"amount": "two"}'),
            (("edit", mid, "--file", str(tmp_path / "missing.json")), None),
            (("replay", mid), None),
            (("show", "nope"), None),
            (("pause", "../etc", "--reason", "x"), None),
        ):
            res = cli(*args, stdin=stdin)
            assert res.returncode == 2, (args, res.stderr)
            assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
        assert declared.ledger.message(mid)["payload"] == {"amount": 2}
        assert cli("cancel", mid, "--reason", "duplicate order").returncode == 0
        assert declared.ledger.message(mid)["status"] == "cancelled"
        assert [e["user"] for e in declared.audit.find(actor="payment")[0]] == ["carol"] * 4
    finally:
        server.stop_event.set()
