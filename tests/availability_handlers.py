"""Handler for availability test (e), run in connector subprocesses (`--module tests.availability_handlers`).

The external system is a SQLite file (AVAIL_DB): `calls` records every handler call (pid, start,
end), `effects` the side effect keyed by message id (an idempotency key, as a payment provider
would use). A message whose payload has `"hold": true` keeps its first call open for a minute, so
that the test can SIGKILL the connector in the middle of that handler; later calls go through.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time

from backend.values import Message
from connectors.registry import Registry

registry = Registry()
_local = threading.local()

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, message_id TEXT, seq INTEGER, n INTEGER, pid INTEGER, started REAL, ended REAL);
CREATE TABLE IF NOT EXISTS effects (id INTEGER PRIMARY KEY, message_id TEXT UNIQUE, seq INTEGER, n INTEGER);
"""

HOLD_SECONDS = 60.0


def db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(os.environ["AVAIL_DB"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
    return conn


@registry.handler("ledgerbook")
def ledgerbook(message: Message) -> None:
    c = db()
    earlier = c.execute("SELECT COUNT(*) FROM calls WHERE message_id = ?", (message.id,)).fetchone()[0]
    call = c.execute(
        "INSERT INTO calls (message_id, seq, n, pid, started) VALUES (?, ?, ?, ?, ?)",
        (message.id, message.seq, message.payload["n"], os.getpid(), time.time()),
    ).lastrowid
    if message.payload.get("hold") and not earlier:
        time.sleep(HOLD_SECONDS)  # the test kills the process here
    c.execute("INSERT OR IGNORE INTO effects (message_id, seq, n) VALUES (?, ?, ?)", (message.id, message.seq, message.payload["n"]))
    c.execute("UPDATE calls SET ended = ? WHERE id = ?", (time.time(), call))
