"""Every command line under hostile input: one line on stderr, exit code 2, never a traceback.

Real processes (`python -m PACKAGE ...` and `python -m fifoq ...`), since what is checked is
what a user sees: the exit code and stderr. The in-process behaviour of the `fifoq` group is
checked with click's runner (the `run_cli` fixture).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import ledger_server
from backend.app import Backend
from backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=full_env, input=stdin, capture_output=True,
                          text=True, timeout=120)


def assert_one_line_error(res: subprocess.CompletedProcess[str], needle: str, code: int = 2) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert needle in res.stderr, res.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other socket listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.fixture
def hostile_files(tmp_path: Path) -> dict[str, Path]:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 10_000 + "1" + "]" * 10_000)
    digits = tmp_path / "digits.json"
    digits.write_text('{"amount": ' + "7" * 5_000 + "}")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    return {"deep": deep, "digits": digits, "binary": binary}


def test_cli_backend_edit_refuses_hostile_files(settings: Settings, hostile_files: dict[str, Path]) -> None:
    env = {"FIFOQ_PREFIX": settings.prefix, "MONGODB_URL": settings.mongodb_url}
    for name, needle in (("deep", "nested too deeply"), ("digits", "more than 4300 digits"), ("binary", "not UTF-8")):
        for module in ("backend", "fifoq"):
            assert_one_line_error(cli(module, "edit", "m1", "--file", str(hostile_files[name]), env=env), needle)
    res = cli("backend", "edit", "m1", "--file", "-", env=env, stdin="[" * 10_000)
    assert_one_line_error(res, "- is nested too deeply")


@pytest.mark.parametrize("module", ["backend", "fifoq"])
def test_cli_ledger_server_port_out_of_range_or_taken(module: str, busy_port: int) -> None:
    assert_one_line_error(cli(module, "ledger-server", "--port", "99999"), "99999 is not in the range")
    assert_one_line_error(cli(module, "ledger-server", "--port", "-1"), "--port")
    assert_one_line_error(cli(module, "ledger-server", "--port", str(busy_port)), "already in use")


def test_cli_wrong_ledger_key_is_one_line(backend: Backend, tmp_path: Path) -> None:
    server, url = ledger_server.serve(backend.ledger, port=0, audit=backend.audit, key_file=tmp_path / "ledger.key")
    wrong = tmp_path / "wrong.key"
    wrong.write_text("00" * 32 + "\n")
    try:
        env = {"MONGODB_URL": url, ledger_server.KEY_FILE_ENV: str(wrong), "FIFOQ_PREFIX": backend.settings.prefix}
        assert_one_line_error(cli("backend", "status", env=env), "refused the key")
        assert_one_line_error(cli("connectors", "run", "payment", "--drain", env=env), "refused the key")
    finally:
        server.stop()


BAD_LOG_LEVEL = {"LOG_LEVEL": "loud"}


@pytest.mark.parametrize("args", [
    ("backend", "status"), ("connectors", "run", "payment", "--drain"), ("connectors", "list"), ("admin", "serve"),
    ("admin", "provision"), ("demo",), ("demo", "emit"), ("fifoq", "status"), ("fifoq", "admin", "serve"),
    ("fifoq", "connectors", "list"), ("fifoq", "demo"),
])
def test_cli_bad_log_level_is_one_line_and_exit_2_everywhere(args: tuple[str, ...]) -> None:
    assert_one_line_error(cli(*args, env=BAD_LOG_LEVEL), "LOG_LEVEL='loud'")


@pytest.mark.parametrize("args, needle", [
    (("backend", "pause", "payment"), "Missing option '--reason'"),
    (("backend", "edit", "m1", "--file", "x.json", "--version", "0"), "--version"),
    (("backend", "relay", "--interval", "nan"), "'nan' is not a finite number"),
    (("connectors", "run", "--drain", "--timeout", "inf"), "--timeout"),
    (("demo", "--rate", "nan"), "--rate"),
    (("backend", "nope"), "No such command 'nope'"),
    (("backend", "reindex-search", "--batch", "0"), "--batch"),
    (("backend", "reindex-search", "--actor", "nobody"), "unknown actor 'nobody'"),
    (("fifoq", "reindex-search", "--batch", "many"), "--batch"),
    (("connectors", "run", "--metrics-port", "99999"), "--metrics-port"),
    (("connectors", "run", "--timeout", "-5", "--drain"), "--timeout"),
    (("connectors", "run", "--module", "no.such.module"), "cannot import handler module"),
    (("connectors", "run", "Not An Actor"), "actor"),
    (("admin", "serve", "--port", "99999"), "99999 is not in the range"),
    (("admin", "create-user", "x", "--role", "root"), "--role"),
    (("admin", "provision", "--guest", "maybe"), "--guest"),
    (("demo", "--duration", "-1"), "--duration"),
    (("demo", "--rate", "fast"), "--rate"),
    (("demo", "--count", "99999999999999999999999999"), "--count"),
    (("demo", "emit", "--metrics-port", "99999"), "--metrics-port"),
    (("bench", "--messages", "0"), "--messages"),
    (("bench", "nope"), "unknown benchmark"),
    (("fifoq", "connectors", "run", "--metrics-port", "0"), "--metrics-port"),
    (("fifoq", "demo", "--seed", "x"), "--seed"),
])
def test_cli_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], needle: str) -> None:
    assert_one_line_error(cli(*args, env={"MONGODB_URL": "mongomock://cli-bad-args"}), needle)


@pytest.mark.parametrize("args, env, needle", [
    (("backend", "status"), {"FIFOQ_PREFETCH": "9" * 5000}, "FIFOQ_PREFETCH"),
    (("connectors", "run", "payment", "--drain"), {"FIFOQ_QUEUE_TYPE": "stream"}, "FIFOQ_QUEUE_TYPE"),
    (("admin", "serve"), {"ADMIN_ENV": "development", "ADMIN_PORT": "99999"}, "ADMIN_PORT='99999': must be <= 65535"),
    (("admin", "serve"), {"ADMIN_ENV": "production", "ADMIN_SECRET_KEY": ""}, "ADMIN_SECRET_KEY is required"),
    (("demo",), {"DEMO_ADMIN_PASSWORD": " ", "FIFOQ_CONFIRM_TIMEOUT": "inf"}, "FIFOQ_CONFIRM_TIMEOUT"),
    (("demo", "emit"), {"MONGODB_URL": ""}, "needs MONGODB_URL"),
    (("fifoq", "status"), {"AMQP_URL": "http://nope"}, "AMQP_URL"),
])
def test_cli_bad_settings_are_one_line_and_exit_2(args: tuple[str, ...], env: dict[str, str], needle: str) -> None:
    assert_one_line_error(cli(*args, env=env), needle)


def test_cli_ports_in_use_are_one_line_and_exit_2(settings: Settings, busy_port: int) -> None:
    env = {"ADMIN_ENV": "development", "ADMIN_PORT": str(busy_port), "FIFOQ_PREFIX": settings.prefix,
           "ADMIN_SECRET_KEY": "k" * 40}
    assert_one_line_error(cli("admin", "serve", env=env), f"cannot listen on 127.0.0.1:{busy_port}")
    assert_one_line_error(cli("demo", "--duration", "1", env=env), f"cannot listen on 127.0.0.1:{busy_port}")
    assert_one_line_error(cli("admin", "serve", "--port", str(busy_port), env=env),
                          "Address already in use")


def test_cli_fifoq_group_gathers_every_command_line(run_cli) -> None:
    from fifoq.cli import main

    res = run_cli(main, ["--help"])
    assert res.code == 0
    for name in ("status", "show", "edit", "replay", "cancel", "pause", "resume", "relay", "ledger-server",
                 "connectors", "admin", "demo"):
        assert f"  {name} " in res.stdout, name
    sub = run_cli(main, ["admin", "--help"])
    assert sub.code == 0 and all(n in sub.stdout for n in ("serve", "create-user", "provision"))
    bad = run_cli(main, ["connectors", "run", "--drain", "--metrics-port", "70000"])
    assert bad.code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_cli_fifoq_imports_the_console_only_for_its_commands() -> None:
    """`fifoq status` stays quick: Flask is imported by `fifoq admin ...` only."""
    code = ("import sys; from fifoq.cli import main; rc = main(['status', '--help']); "
            "print(rc, 'flask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stdout + out.stderr


def test_cli_operator_commands_work_through_fifoq(backend: Backend, tmp_path: Path) -> None:
    """The same operator commands under the console script's name (`python -m fifoq` runs it)."""
    backend.subscriptions.actor("payment")
    backend.subscriptions.subscribe("payment", "order.paid")
    backend.declare()
    server, url = ledger_server.serve(backend.ledger, audit=backend.audit)
    env = {"MONGODB_URL": url, "FIFOQ_PREFIX": backend.settings.prefix, "FIFOQ_OPERATOR": "dora"}
    try:
        mid = backend.emit_event("order.paid", {"amount": 1})[0]
        assert cli("fifoq", "pause", "payment", "--reason", "maintenance", env=env).returncode == 0
        status = cli("fifoq", "status", env=env)
        assert status.returncode == 0 and "paused by dora: maintenance" in status.stdout
        fixed = tmp_path / "fixed.json"
        fixed.write_text(json.dumps({"amount": 3}))
        assert cli("fifoq", "edit", mid, "--file", str(fixed), env=env).returncode == 0
        assert json.loads(cli("fifoq", "show", mid, env=env).stdout)["payload"] == {"amount": 3}
    finally:
        server.stop()
