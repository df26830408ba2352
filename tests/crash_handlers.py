"""Handlers for the crash tests, run in connector subprocesses (`--module tests.crash_handlers`).

The "external system" is a SQLite file (CRASH_DB): `calls` records every handler call (pid,
start, end), `effects` the side effect, keyed by message id as a real provider keys on an
idempotency key. `blocker` is registered with on_interrupted=BLOCK and writes effects without
any deduplication.
"""
from __future__ import annotations

import os
import random
import sqlite3
import threading
import time

from backend.errors import TransientError
from backend.values import Message
from connectors.registry import OnInterrupted, Registry

registry = Registry()
_local = threading.local()

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, message_id TEXT, seq INTEGER, pid INTEGER, started REAL, ended REAL);
CREATE TABLE IF NOT EXISTS effects (id INTEGER PRIMARY KEY, message_id TEXT UNIQUE, seq INTEGER, n INTEGER);
CREATE TABLE IF NOT EXISTS raw_effects (id INTEGER PRIMARY KEY, message_id TEXT, seq INTEGER);
CREATE TABLE IF NOT EXISTS keyed_effects (id INTEGER PRIMARY KEY, message_id TEXT UNIQUE, key TEXT, i INTEGER);
"""


def db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(os.environ["CRASH_DB"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
    return conn


def execute(sql: str, *params: object) -> sqlite3.Cursor:
    """A write to the external system. A killed process can leave the SQLite file busy for a
    moment (WAL recovery): that is the external system being briefly unavailable, which a real
    connector reports as a transient error (retried in place), not as bad data."""
    try:
        return db().execute(sql, params)
    except sqlite3.OperationalError as exc:
        raise TransientError(f"external system busy: {exc}") from exc


@registry.handler("crashy")
def crashy(message: Message) -> None:
    call = execute(
        "INSERT INTO calls (message_id, seq, pid, started) VALUES (?, ?, ?, ?)",
        message.id, message.seq, os.getpid(), time.time(),
    ).lastrowid
    time.sleep(random.uniform(0, float(os.environ.get("CRASH_SLEEP", "0.004"))))
    execute("INSERT OR IGNORE INTO effects (message_id, seq, n) VALUES (?, ?, ?)", message.id, message.seq, message.payload["n"])
    execute("UPDATE calls SET ended = ? WHERE id = ?", time.time(), call)


@registry.handler("blocker", on_interrupted=OnInterrupted.BLOCK)
def blocker(message: Message) -> None:
    c = db()
    c.execute("INSERT INTO calls (message_id, seq, pid, started) VALUES (?, ?, ?, ?)", (message.id, message.seq, os.getpid(), time.time()))
    if message.payload.get("slow"):
        time.sleep(30)  # the test kills the process here
    c.execute("INSERT INTO raw_effects (message_id, seq) VALUES (?, ?)", (message.id, message.seq))


@registry.handler("keyed")
def keyed(message: Message) -> None:
    time.sleep(random.uniform(0, 0.003))
    execute(
        "INSERT OR IGNORE INTO keyed_effects (message_id, key, i) VALUES (?, ?, ?)",
        message.id, message.payload["dossier_id"], message.payload["i"],
    )


@registry.handler("replayer", on_interrupted=OnInterrupted.BLOCK)
def replayer(message: Message) -> None:
    """Fails on {"bad": true}; {"slow": true} hangs so the test can kill it mid-replay."""
    c = db()
    c.execute("INSERT INTO calls (message_id, seq, pid, started) VALUES (?, ?, ?, ?)", (message.id, message.seq, os.getpid(), time.time()))
    if message.payload.get("bad"):
        raise ValueError("bad data")
    if message.payload.get("slow"):
        time.sleep(30)  # the test kills the process here
    c.execute("INSERT INTO raw_effects (message_id, seq) VALUES (?, ?)", (message.id, message.seq))
