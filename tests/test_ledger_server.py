"""The embedded ledger server (backend.ledger_server): reachable only by the user who started it,
data-only frames, the Ledger's and the audit log's public methods served without a list."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from multiprocessing import AuthenticationError
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

import pytest

from backend import ledger_server, ledger_wire
from backend.app import Backend
from backend.audit import AuditEntry, AuditLog
from backend.errors import ConfigError, UnknownMessage, ValidationError
from backend.ledger import Ledger
from backend.settings import Settings
from backend.store import Store
from backend.values import ErrorInfo, Status

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
OLD_DEFAULT_KEY = b"fifoq-dev-ledger"


@pytest.fixture
def ledger(settings: Settings) -> Ledger:
    return Ledger(Store.open(settings))


@pytest.fixture
def mid(backend: Backend) -> str:
    """A message of actor payment in the backend's ledger."""
    backend.subscriptions.subscribe("payment", "order.paid")
    backend.declare()
    found = backend.emit_event("order.paid", {"amount": 1, "at": "x"})[0]
    backend.emitter.flush()  # its confirm recorded now, not between a test's two reads of it
    return found


@pytest.fixture
def served(ledger: Ledger) -> Iterator[tuple[ledger_server.LedgerServer, str]]:
    server, url = ledger_server.serve(ledger)
    yield server, url
    server.stop()


@pytest.fixture
def served_tcp(ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ledger_server.LedgerServer, str]]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    server, url = ledger_server.serve(ledger, "127.0.0.1", 0, key_file=keys / "ledger.key")
    monkeypatch.setenv(ledger_server.KEY_FILE_ENV, str(keys / "ledger.key"))
    yield server, url
    server.stop()


def as_other_user(fn: Callable[[], Any], uid: int = NOBODY) -> str:
    """Run fn in a forked child that dropped to `uid` (the interpreter is already in memory, so
    the child needs no access to the checkout); returns 'ok: <result>' or '<Error>: <message>'."""
    if os.getuid() != 0:
        pytest.skip("switching to another local user needs root (the CI runs the suite as root)")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                out = f"ok: {fn()!r}"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                out = f"{type(exc).__name__}: {exc}"
            os.write(write, out.encode()[:60000])
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


# -- what the server serves ----------------------------------------------------------------------
def test_ledger_server_serves_every_public_method_and_the_callers_errors(backend: Backend, mid: str,
                                                                          served_backend) -> None:
    ledger = backend.ledger
    _server, url = served_backend
    remote = ledger_server.connect(url)
    doc = remote.message(mid)
    assert doc["payload"] == {"amount": 1, "at": "x"} and isinstance(doc["created_at"], datetime)
    rows, total = remote.find(actor="payment")  # a tuple comes back a tuple
    assert total == 1 and rows[0]["_id"] == mid
    assert remote.status_counts() == ledger.status_counts()
    # Every public method of the Ledger is there, from the class itself: no list to keep.
    public = {n for n in dir(Ledger) if not n.startswith("_") and callable(getattr(Ledger, n))}
    assert public <= set(dir(remote))
    # The project's errors come back as themselves.
    with pytest.raises(UnknownMessage):
        remote.message("no-such-id")
    # Attributes and private methods are not served (so `getattr(ledger, "store", None)` is None).
    assert getattr(remote, "store", None) is None
    with pytest.raises(AttributeError):
        remote._collection  # noqa: B018


def test_ledger_server_runs_the_ledgers_static_methods_in_the_client(served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A static method cannot touch the store: the client runs it itself (an emit_many through the
    ledger server builds each message with Ledger.new_message: one round trip each would cost more
    than the rest of the emit); every other method still goes to the server."""
    server, url = served
    calls: list[str] = []
    real_call = server.call
    monkeypatch.setattr(server, "call", lambda request: calls.append(request.get("method", "?")) or real_call(request))
    remote = ledger_server.connect(url)
    doc = remote.new_message("payment", 7, "order.paid", {"amount": 1}, "corr", 0, None, "ev-1")
    assert doc == {**Ledger.new_message("payment", 7, "order.paid", {"amount": 1}, "corr", 0, None, "ev-1"),
                   "created_at": doc["created_at"], "updated_at": doc["updated_at"]}
    assert remote.resequenced(doc, 9)["_id"] == "payment.0.9"
    assert calls == []
    remote.insert([doc])
    assert calls and remote.message("payment.0.7")["event_id"] == "ev-1"


def test_ledger_server_serves_the_audit_log(ledger: Ledger) -> None:
    audit = AuditLog(ledger.store)
    server, url = ledger_server.serve(ledger, audit=audit)
    try:
        remote = ledger_server.connect_audit(url)
        remote.record(AuditEntry("carol", "pause", actor="payment", details={"reason": "outage"}))
        rows, total = remote.find(actor="payment", since=datetime(2000, 1, 1, tzinfo=timezone.utc))
        assert total == 1 and rows[0]["user"] == "carol" and audit.find()[1] == 1
    finally:
        server.stop()


def test_ledger_server_socket_is_private_and_removed_at_stop(ledger: Ledger) -> None:
    server, url = ledger_server.serve(ledger)
    path = Path(ledger_server.parse(url).path or "")
    assert url.startswith("embedded:///") and path.name == "ledger.sock"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.parent.stat().st_uid == os.getuid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    server.stop()
    from tests.helpers import wait_for

    wait_for(lambda: not path.parent.exists(), timeout=10, what="the socket's directory to go")
    with pytest.raises(ConfigError, match="no embedded ledger"):
        ledger_server.connect(url)


def test_ledger_server_refuses_a_socket_directory_others_can_enter(ledger: Ledger, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ConfigError, match="not a private directory"):
        ledger_server.serve(ledger, socket_path=shared / "ledger.sock")


# -- who may connect -----------------------------------------------------------------------------
@pytest.fixture
def served_backend(backend: Backend) -> Iterator[tuple[ledger_server.LedgerServer, str]]:
    server, url = ledger_server.serve(backend.ledger, audit=backend.audit)
    yield server, url
    server.stop()


def test_ledger_server_refuses_another_local_user_on_its_socket(backend: Backend, mid: str, served_backend) -> None:
    ledger = backend.ledger
    server, url = served_backend
    before = ledger.message(mid)["status"]
    # The socket's directory is private: another user cannot even reach the socket.
    out = as_other_user(lambda: ledger_server.connect(url).message(mid))
    assert out.startswith("ConfigError:") and "serves only the user who started it" in out, out
    # Opened up by mistake, the server still checks the peer's uid and hangs up on it.
    sock_path = Path(server.address.path or "")
    sock_path.parent.chmod(0o711)
    sock_path.chmod(0o777)
    out = as_other_user(lambda: ledger_server.connect(url).cancel(mid, "mallory", "gone"))
    assert out.startswith("ConfigError:") and "refused this client" in out, out
    assert ledger.message(mid)["status"] == before != "cancelled"  # not cancelled
    assert ledger_server.connect(url).message(mid)["_id"] == mid  # its owner still gets in


def test_ledger_server_checks_the_peer_uid(served, ledger: Ledger) -> None:
    """The SO_PEERCRED check by itself (any user can run this one): a server that serves
    another uid than the caller's hangs up on it."""
    server, url = served
    server._uid = os.getuid() + 1
    with pytest.raises(ConfigError, match="refused this client"):
        ledger_server.connect(url)


def test_ledger_server_over_tcp_needs_the_key_of_this_start(served_tcp, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server, url = served_tcp
    assert url.startswith("embedded://127.0.0.1:")
    assert stat.S_IMODE(server.key_file.stat().st_mode) == 0o600
    assert ledger_server.connect(url).status_counts() == {}
    for name, key in (("wrong.key", os.urandom(32).hex()), ("old.key", OLD_DEFAULT_KEY.hex()),
                      ("old-text.key", OLD_DEFAULT_KEY.decode())):
        bad = tmp_path / name
        bad.write_text(key + "\n")
        monkeypatch.setenv(ledger_server.KEY_FILE_ENV, str(bad))
        with pytest.raises(ConfigError):
            ledger_server.connect(url)


def test_ledger_server_refuses_the_old_pickle_protocol_and_its_default_key(served_tcp, ledger: Ledger) -> None:
    """A multiprocessing-manager client holding the old documented key gets nothing."""
    server, _url = served_tcp

    class OldClient(BaseManager):
        pass

    OldClient.register("ledger")
    client = OldClient(address=("127.0.0.1", server.address.port), authkey=OLD_DEFAULT_KEY)
    # multiprocessing's client finds no challenge of its own: it gives up (AssertionError on 3.11,
    # AuthenticationError on later versions) before sending anything.
    with pytest.raises((AuthenticationError, AssertionError, OSError, EOFError)):  # noqa: PT012 - either call may fail
        client.connect()
        client.ledger().cancel("x", "mallory", "gone")  # type: ignore[attr-defined]


def test_ledger_server_over_tcp_refuses_another_local_user(served_tcp, ledger: Ledger) -> None:
    _server, url = served_tcp
    out = as_other_user(lambda: ledger_server.connect(url))
    assert out.startswith("ConfigError:") and "key file" in out, out


def test_ledger_server_listens_on_loopback_only_unless_told(ledger: Ledger, tmp_path: Path, caplog) -> None:
    with pytest.raises(ConfigError, match="--allow-remote"):
        ledger_server.serve(ledger, "0.0.0.0", 0, key_file=tmp_path / "k")
    server, _url = ledger_server.serve(ledger, "0.0.0.0", 0, key_file=tmp_path / "k", allow_remote=True)
    server.stop()
    assert "not encrypted" in caplog.text


# -- frames carry data, never code ---------------------------------------------------------------
def _raw_session(url: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(ledger_server.parse(url).path or "")
    hello = ledger_wire.recv(sock)
    assert hello and "ledger" in hello["objects"]
    return sock


@pytest.mark.parametrize("request_", [
    {"target": "ledger", "method": "message", "args": [{"c": ["os.system", {"command": "touch {marker}"}]}]},
    {"target": "ledger", "method": "message", "args": [{"e": ["subprocess.Popen", "touch {marker}"]}]},
    {"target": "ledger", "method": "message", "args": [{"c": ["backend.__main__.X", {}]}]},
    {"target": "ledger", "method": "__init__", "args": []},
    {"target": "ledger", "method": "_collection", "args": []},
    {"target": "os", "method": "system", "args": ["touch {marker}"]},
])
def test_ledger_server_runs_no_code_from_a_client(served, tmp_path: Path, request_: dict) -> None:
    _server, url = served
    marker = tmp_path / "pwned"
    sock = _raw_session(url)
    try:
        ledger_wire.send(sock, json.loads(json.dumps(request_).replace("{marker}", str(marker))))
        reply = ledger_wire.recv(sock)
        assert reply and "error" in reply and "result" not in reply
    finally:
        sock.close()
    assert not marker.exists()
    assert "backend.__main__" not in sys.modules


def test_ledger_server_survives_garbage(served) -> None:
    _server, url = served
    sock = _raw_session(url)
    sock.sendall(b"\x00\x00\x00\x05{not}")
    assert sock.recv(10) == b""  # hung up on
    sock.close()
    assert ledger_server.connect(url).status_counts() == {}


def test_ledger_wire_round_trips_the_values_the_ledger_uses() -> None:
    value = {"a": [1, 2.5, None, True, "é"], ("k", 1): {"x"}, "t": (1, "2"),
             "when": datetime(2024, 6, 1, 12, tzinfo=timezone.utc), "naive": datetime(2024, 6, 1),
             "status": Status.DONE, "error": ErrorInfo("E", "m"), "raw": b"\x00\xff", "{\"m\"": {"m": []}}
    assert ledger_wire.decode(json.loads(json.dumps(ledger_wire.encode(value)))) == value
    with pytest.raises(ValidationError):
        ledger_wire.encode({"x": object()})


# -- the command line ----------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "MONGODB_URL": "", **(env or {})})


def _one_line_exit_2(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr


def test_ledger_server_cli_bad_port_and_port_in_use(tmp_path: Path) -> None:
    _one_line_exit_2(_cli("ledger-server", "--port", "99999"), "65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line_exit_2(_cli("ledger-server", "--port", str(port), "--key-file", str(tmp_path / "k")), "in use")
    _one_line_exit_2(_cli("ledger-server", "--port", "0", "--host", "0.0.0.0", "--key-file", str(tmp_path / "k")),
                     "--allow-remote")


def test_ledger_server_cli_client_with_a_wrong_key_gets_one_line(served_tcp, tmp_path: Path) -> None:
    _server, url = served_tcp
    wrong = tmp_path / "wrong.key"
    wrong.write_text(OLD_DEFAULT_KEY.hex())
    _one_line_exit_2(_cli("status", env={"MONGODB_URL": url, ledger_server.KEY_FILE_ENV: str(wrong)}), "refused the key")


def test_ledger_server_cli_serves_this_user_until_stopped(tmp_path: Path, settings: Settings) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "MONGODB_URL": "", "FIFOQ_PREFIX": settings.prefix, "XDG_RUNTIME_DIR": str(run_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "backend", "ledger-server"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = f"embedded://{run_dir}/fifoq/ledger.sock"
        assert f"MONGODB_URL={url}" in line, line + proc.stderr.read()  # type: ignore[union-attr]
        assert stat.S_IMODE((run_dir / "fifoq").stat().st_mode) == 0o700
        status = _cli("status", env={"MONGODB_URL": url, "FIFOQ_PREFIX": settings.prefix})
        assert status.returncode == 0, status.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert not (run_dir / "fifoq" / "ledger.sock").exists()
