"""Share one embedded ledger between processes, for development and tests without MongoDB.

The embedded store (mongomock) lives in one process. `serve()` publishes its Ledger and AuditLog
to other processes on this machine, so that connectors, the console, the operator CLI and the
demo started with MONGODB_URL=embedded://... use it as they would use MongoDB; they can be
killed without losing the ledger, as with a real server. Production uses a MongoDB replica set.

Who can connect, and what it grants:
- By default the server listens on a Unix socket in a directory private to the user who started
  it (mode 0700, checked at start), and refuses any peer whose uid is not that user's
  (SO_PEERCRED): MONGODB_URL=embedded:///path/to/ledger.sock.
- With a TCP port (MONGODB_URL=embedded://127.0.0.1:PORT) a random key is generated at each start
  and written to a key file readable by that user only (0600); a client proves it holds the key
  (HMAC challenge-response, both ways) before anything else. Loopback only, unless the operator
  passes allow_remote (then a warning: the traffic is not encrypted).
- A connected client may call every public method of the Ledger and of the AuditLog: read every
  message and payload, change statuses, edit payloads, cancel messages, write audit entries, with
  no role check and no audit entry of its own. Holding access is holding the ledger, as with
  write access to its MongoDB database. It is not code execution: frames carry data only
  (backend.ledger_wire, JSON; no pickle).

The methods are served generically (every public method of the served objects), so that the
Ledger's API can grow without a list kept here.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import inspect
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import socketserver
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from backend import ledger_wire as wire
from backend.audit import AuditLog
from backend.errors import ConfigError, StoreError
from backend.ledger import Ledger
from backend.settings import EnvSettings, setting

log = logging.getLogger(__name__)

KEY_FILE_ENV = "FIFOQ_LEDGER_KEY_FILE"
PROTOCOL = "fifoq-ledger/2"
SOCKET_NAME = "ledger.sock"
HANDSHAKE_TIMEOUT_SECONDS = 10.0
KEY_BYTES = 32
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class LedgerClientSettings(EnvSettings):
    """What a client of a ledger server served on TCP needs (a Unix socket needs nothing)."""

    # The key file `ledger-server --port` wrote; empty: <runtime dir>/ledger-<port>.key.
    key_file: str = setting(KEY_FILE_ENV, "")


# -- addresses ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Address:
    """Where a ledger server listens: a Unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def url(self) -> str:
        if self.path is not None:
            return "embedded://" + quote(self.path)
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"embedded://{host}:{self.port}"

    def __str__(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def parse(url: str) -> Address:
    """embedded:///path/to/ledger.sock or embedded://HOST:PORT. Raises ConfigError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"MONGODB_URL: {url!r} is not a valid embedded:// URL") from None
    if parts.scheme != "embedded":
        raise ConfigError(f"expected embedded:///PATH or embedded://HOST:PORT, got {url!r}")
    if not parts.netloc and parts.path.startswith("/"):
        return Address(path=unquote(parts.path))
    if parts.hostname and port and not parts.path.strip("/"):
        return Address(host=parts.hostname, port=port)
    raise ConfigError(f"expected embedded:///PATH (a Unix socket) or embedded://HOST:PORT, got {url!r}")


def runtime_dir() -> Path:
    """This user's private directory for sockets and keys: $XDG_RUNTIME_DIR/fifoq, else
    /tmp/fifoq-<uid> (created 0700; refused when it exists with another owner or wider rights)."""
    base = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    return Path(base) / "fifoq" if base else Path(tempfile.gettempdir()) / f"fifoq-{os.getuid()}"


def default_socket() -> Path:
    return runtime_dir() / SOCKET_NAME


def default_key_file(port: int) -> Path:
    return runtime_dir() / f"ledger-{port}.key"


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check that it is a directory only this user can enter."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{path} is not a private directory of this user (owner uid {st.st_uid}, mode "
                          f"{oct(st.st_mode & 0o777)}): remove it, or choose another place")
    return path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mac(key: bytes, role: bytes, nonce: bytes) -> str:
    return hmac.new(key, role + nonce, hashlib.sha256).hexdigest()


def _public_methods(obj: Any) -> dict[str, Callable[..., Any]]:
    """Every public method of obj's class: what the server answers for."""
    return {name: getattr(obj, name) for name, member in inspect.getmembers(type(obj))
            if not name.startswith("_") and inspect.isroutine(member)}


# -- server ------------------------------------------------------------------------------------
class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        owner = self.server.owner
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
            if not owner.admit(sock, self.client_address):
                return
            sock.settimeout(None)
            wire.send(sock, {"objects": {name: sorted(methods) for name, methods in owner.objects.items()}})
            while not owner.stop_event.is_set():
                request = wire.recv(sock)
                if request is None:
                    return
                wire.send(sock, owner.call(request))
        except (OSError, wire.ProtocolError) as exc:
            log.debug("ledger server: connection ended: %s", exc)
        finally:
            owner.forget(sock)


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    owner: LedgerServer


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class _TCPServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class LedgerServer:
    """A running ledger server. `url` is what clients put in MONGODB_URL; `stop()` (or
    `stop_event.set()`) closes it, its connections, its socket and its key file."""

    def __init__(self, objects: dict[str, Any], address: Address, *, key_file: Path | None = None,
                 temp_dir: Path | None = None) -> None:
        self.objects = {name: _public_methods(obj) for name, obj in objects.items()}
        self.address = address
        self.key_file = key_file
        self.key: bytes | None = None
        self.stop_event = threading.Event()
        self._temp_dir = temp_dir
        self._uid = os.getuid()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopper: threading.Thread | None = None
        self._server = self._listen()
        self._server.owner = self
        if address.port == 0:
            bound: Any = self._server.server_address  # (host, port[, flow, scope]) for a TCP listener
            self.address = Address(host=address.host, port=int(bound[1]))
        if self.key_file is None and self.address.port is not None:
            self.key_file = default_key_file(self.address.port)
        if self.address.port is not None:
            self.key = secrets.token_bytes(KEY_BYTES)
            self._write_key(self.key_file)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return self.address.url

    def _listen(self) -> _Server:
        a = self.address
        try:
            if a.path is not None:
                _clear_stale_socket(Path(a.path))
                server: _Server = _UnixServer(a.path, _Handler)
                os.chmod(a.path, 0o600)
                return server
            return (_TCP6Server if ":" in (a.host or "") else _TCPServer)((a.host or "", a.port or 0), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {a}: the address is already in use") from None
            raise ConfigError(f"cannot listen on {a}: {exc.strerror or exc}") from None
        except OverflowError:
            raise ConfigError(f"cannot listen on {a}: the port must be between 0 and 65535") from None

    def _write_key(self, path: Path) -> None:
        """Write the key readable by this user only (0600), replacing an older server's key."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            if path.parent == runtime_dir():
                private_dir(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.key.hex() + "\n")  # type: ignore[union-attr]
            os.replace(tmp, path)
        except OSError as exc:
            self._server.server_close()
            raise ConfigError(f"cannot write the key file {path}: {exc.strerror}") from None
        except ConfigError:
            self._server.server_close()
            raise

    def start(self) -> LedgerServer:
        threading.Thread(target=self._server.serve_forever, name="ledger-server", daemon=True).start()
        self._stopper = threading.Thread(target=self._stop_when_asked, name="ledger-server-stop", daemon=True)
        self._stopper.start()
        log.info("embedded ledger served at %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait until the socket and the key file are gone."""
        self.stop_event.set()
        if self._stopper is not None and self._stopper is not threading.current_thread():
            self._stopper.join(timeout)

    def _stop_when_asked(self) -> None:
        self.stop_event.wait()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for path in (self.address.path, self.key_file if self.key is not None else None):
            if path is not None:
                Path(path).unlink(missing_ok=True)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        log.info("embedded ledger server at %s stopped", self.url)

    # -- per connection, in the server's threads ---------------------------------------------
    def admit(self, sock: socket.socket, peer: Any) -> bool:
        """Authenticate a new connection; False (and a log line) when it is refused."""
        with self._lock:
            self._connections.add(sock)
        if self.key is None:
            uid = _peer_uid(sock)
            if uid is not None and uid != self._uid:
                log.warning("ledger server: refused a connection from uid %d (serves uid %d only)", uid, self._uid)
                return False
            return True
        nonce = secrets.token_bytes(KEY_BYTES)
        wire.send(sock, {"protocol": PROTOCOL, "challenge": nonce.hex()})
        answer = wire.recv(sock, limit=wire.MAX_HANDSHAKE_FRAME) or {}
        theirs = answer.get("challenge")
        if not (isinstance(answer.get("response"), str) and isinstance(theirs, str)
                and hmac.compare_digest(answer["response"], _mac(self.key, b"client", nonce))):
            log.warning("ledger server: refused a connection from %s: wrong key", peer[0] if peer else "?")
            wire.send(sock, {"refused": "wrong key"})
            return False
        try:
            their_nonce = bytes.fromhex(theirs)
        except ValueError:
            return False
        wire.send(sock, {"response": _mac(self.key, b"server", their_nonce)})
        return True

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        method = self.objects.get(str(request.get("target")), {}).get(str(request.get("method")))
        if method is None:
            return {"error": wire.encode_error(AttributeError(
                f"no method {request.get('method')!r} on {request.get('target')!r}"))}
        try:
            args = wire.decode(request.get("args", []))
            kwargs = wire.decode(request.get("kwargs", {"m": []}))
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise wire.ProtocolError("args must be a list and kwargs a dict")
            return {"result": wire.encode(method(*args, **{str(k): v for k, v in kwargs.items()}))}
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, as in-process
            return {"error": wire.encode_error(exc)}

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)


def _peer_uid(sock: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the directory's mode is the only guard
        return None
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    return uid


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file a dead server left; refuse to take over a live one."""
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ConfigError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise ConfigError(f"a ledger server already listens on {path}")


def serve(ledger: Ledger, host: str | None = None, port: int | None = None, audit: AuditLog | None = None, *,
          socket_path: str | os.PathLike[str] | None = None, key_file: str | os.PathLike[str] | None = None,
          allow_remote: bool = False) -> tuple[LedgerServer, str]:
    """Serve `ledger` (and its audit log) from background threads of this process.

    Without a port, on a Unix socket: `socket_path`, or a fresh private temporary directory.
    With a port (0: any free one), on TCP `host` (default 127.0.0.1) with a key file (`key_file`,
    default <runtime dir>/ledger-<port>.key). Returns (server, url); stop it with server.stop().
    Raises ConfigError (address in use, a non-loopback host without allow_remote, ...).
    """
    objects = {"ledger": ledger, "audit": audit or AuditLog(ledger.store)}
    temp_dir = None
    if port is None:
        if socket_path is None:
            temp_dir = Path(tempfile.mkdtemp(prefix="fifoq-ledger-"))  # 0700, ours
            socket_path = temp_dir / SOCKET_NAME
        else:
            private_dir(Path(socket_path).parent)
        address = Address(path=str(socket_path))
    else:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port {port}: a port is a number from 1 to 65535")
        host = host or "127.0.0.1"
        if not _is_loopback(host):
            if not allow_remote:
                raise ConfigError(f"--host {host} is not a loopback address: whoever reaches it with the key reads and "
                                  "writes the whole ledger, unencrypted; pass --allow-remote to listen there anyway")
            log.warning("ledger server listening on %s: reachable from other machines by whoever holds the key, "
                        "and the traffic is not encrypted (development only)", host)
        address = Address(host=host, port=port)
    server = LedgerServer(objects, address, key_file=Path(key_file) if key_file else None, temp_dir=temp_dir)
    return server.start(), server.url


# -- client ------------------------------------------------------------------------------------
class _Link:
    """The connection of each thread to one ledger server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.address = parse(url)
        self.objects: dict[str, frozenset[str]] = {}
        self._local = threading.local()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._socket()  # connect now: a wrong URL or key fails at start-up, not at the first call

    def _socket(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._connect()
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _connect(self) -> socket.socket:
        a = self.address
        try:
            if a.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
                sock.connect(a.path)
            else:
                sock = socket.create_connection((a.host, a.port or 0), timeout=HANDSHAKE_TIMEOUT_SECONDS)
        except PermissionError:
            raise ConfigError(f"the embedded ledger at {self.url} is out of this user's reach: it serves only the "
                              "user who started it") from None
        except OSError as exc:
            raise ConfigError(f"no embedded ledger at {self.url}: {exc.strerror or exc}") from None
        try:
            if a.port is not None:
                self._prove_key(sock)
            hello = wire.recv(sock, limit=wire.MAX_HANDSHAKE_FRAME * 16)
            if hello is None:
                raise ConfigError(f"the embedded ledger at {self.url} refused this client "
                                  "(it serves only the user who started it)")
            self.objects = {k: frozenset(v) for k, v in dict(hello["objects"]).items()}
            sock.settimeout(None)
            return sock
        except (OSError, wire.ProtocolError, KeyError, TypeError, ValueError) as exc:
            sock.close()
            if isinstance(exc, ConnectionResetError):
                raise ConfigError(f"the embedded ledger at {self.url} refused this client "
                                  "(it serves only the user who started it)") from None
            raise ConfigError(f"no embedded ledger at {self.url}: {exc}") from None
        except ConfigError:
            sock.close()
            raise

    def _prove_key(self, sock: socket.socket) -> None:
        path = Path(LedgerClientSettings.from_env().key_file or default_key_file(self.address.port or 0))
        try:
            key = bytes.fromhex(path.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read the embedded ledger's key file {path} ({exc.strerror}); "
                              f"set {KEY_FILE_ENV} to the file `ledger-server` wrote") from None
        except ValueError:
            raise ConfigError(f"{path} is not a ledger server key file ({KEY_FILE_ENV})") from None
        hello = wire.recv(sock, limit=wire.MAX_HANDSHAKE_FRAME)
        if not hello or hello.get("protocol") != PROTOCOL or not isinstance(hello.get("challenge"), str):
            raise wire.ProtocolError(f"not a fifoq ledger server (expected {PROTOCOL})")
        mine = secrets.token_bytes(KEY_BYTES)
        wire.send(sock, {"response": _mac(key, b"client", bytes.fromhex(hello["challenge"])), "challenge": mine.hex()})
        answer = wire.recv(sock, limit=wire.MAX_HANDSHAKE_FRAME) or {}
        if "refused" in answer:
            raise ConfigError(f"the embedded ledger at {self.url} refused the key in {path}: it changes at each "
                              f"start of `ledger-server`; set {KEY_FILE_ENV} to the file it wrote")
        if not hmac.compare_digest(str(answer.get("response", "")), _mac(key, b"server", mine)):
            raise ConfigError(f"the server at {self.url} does not hold the key in {path}: not our ledger server")

    def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        request = {"target": target, "method": method, "args": wire.encode(list(args)), "kwargs": wire.encode(kwargs)}
        sock = self._socket()
        try:
            wire.send(sock, request)
            reply = wire.recv(sock)
        except (OSError, wire.ProtocolError) as exc:
            self._drop(sock)
            raise StoreError(f"ledger unavailable: the embedded ledger at {self.url}: {exc}") from None
        if reply is None:
            self._drop(sock)
            raise StoreError(f"ledger unavailable: the embedded ledger at {self.url} closed the connection")
        if "error" in reply:
            raise wire.decode_error(reply["error"])
        return wire.decode(reply.get("result"))

    def _drop(self, sock: socket.socket) -> None:
        self._local.sock = None
        sock.close()

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class Remote:
    """A served object's public methods, called in the server: `Remote(link, "ledger").message(id)`.

    The static methods of the served class (`kind`), which cannot touch its store (a message
    document built by Ledger.new_message, say), run here instead: one round trip per message of
    an emit_many would cost more than the rest of it."""

    def __init__(self, link: _Link, target: str, kind: type | None = None) -> None:
        self._link = link
        self._target = target
        self._kind = kind

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._link.objects.get(self._target, ()):
            raise AttributeError(f"the {self._target} served at {self._link.url} has no method {name!r}")
        if self._kind is not None and isinstance(inspect.getattr_static(self._kind, name, None), staticmethod):
            return getattr(self._kind, name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._link.call(self._target, name, *args, **kwargs)

        method.__name__ = name
        return method

    def __dir__(self) -> list[str]:
        return sorted(self._link.objects.get(self._target, ()))

    def __repr__(self) -> str:
        return f"<{self._target} served at {self._link.url}>"


def connect(url: str) -> Ledger:
    """A proxy with the Ledger's methods, talking to the process that serves it. Raises ConfigError
    when nothing serves `url` or the server refuses this client."""
    return Remote(_Link(url), "ledger", Ledger)  # type: ignore[return-value]


def connect_audit(url: str) -> AuditLog:
    return Remote(_Link(url), "audit", AuditLog)  # type: ignore[return-value]
