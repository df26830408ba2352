"""Share one embedded ledger between processes, for development and tests without MongoDB.

The embedded store (mongomock) lives in one process. `serve()` publishes its Ledger through the
standard library's multiprocessing manager, so connector processes started with
MONGODB_URL=embedded://HOST:PORT use it as they would use MongoDB; and they can be killed without
losing the ledger, as with a real server. Production uses a MongoDB replica set instead.
"""
from __future__ import annotations

import logging
import os
import threading
from multiprocessing.managers import BaseManager
from typing import Any
from urllib.parse import urlsplit

from backend.audit import AuditLog
from backend.errors import ConfigError
from backend.ledger import Ledger

log = logging.getLogger(__name__)

AUTHKEY_ENV = "FIFOQ_LEDGER_AUTHKEY"


class _ServerManager(BaseManager):
    pass


class _ClientManager(BaseManager):
    pass


_ClientManager.register("ledger")
_ClientManager.register("audit")


def _authkey() -> bytes:
    return os.environ.get(AUTHKEY_ENV, "fifoq-dev-ledger").encode()


def parse(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "embedded" or not parts.hostname or not parts.port:
        raise ConfigError(f"expected embedded://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


def serve(ledger: Ledger, host: str = "127.0.0.1", port: int = 0, audit: AuditLog | None = None) -> tuple[Any, str]:
    """Serve `ledger` in a background thread of this process. Returns (server, url); stop it
    with `server.stop_event.set()`."""
    _ServerManager.register("ledger", callable=lambda: ledger)
    _ServerManager.register("audit", callable=lambda: audit or AuditLog(ledger.store))
    manager = _ServerManager(address=(host, port), authkey=_authkey())
    server = manager.get_server()

    def run() -> None:
        try:
            server.serve_forever()
        except SystemExit:  # serve_forever exits this way when server.stop_event is set
            pass

    threading.Thread(target=run, name="ledger-server", daemon=True).start()
    address: Any = server.address  # (host, port) for a TCP listener
    h, p = address
    url = f"embedded://{h}:{p}"
    log.info("embedded ledger served at %s", url)
    return server, url


def connect(url: str) -> Ledger:
    """A proxy with the Ledger's methods, talking to the process that serves it."""
    return _manager(url).ledger()  # type: ignore[attr-defined]


def connect_audit(url: str) -> AuditLog:
    return _manager(url).audit()  # type: ignore[attr-defined]


def _manager(url: str) -> _ClientManager:
    host, port = parse(url)
    manager = _ClientManager(address=(host, port), authkey=_authkey())
    try:
        manager.connect()
    except OSError as exc:
        raise ConfigError(f"no embedded ledger at {url}: {exc}") from exc
    return manager
