"""MongoDB access: the only module that imports pymongo (and mongomock, its embedded stand-in).

Everything the project keeps (messages, actors, audit, users) goes through a `Store`. Callers use
the pymongo collection API inside `with store.op():`, which translates driver errors into the
project's errors and, for the embedded store, serialises operations: mongomock does not make
`find_one_and_update` atomic across threads, a real MongoDB server does.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import mongomock
import pymongo
from pymongo import errors as mongo_errors

from backend.errors import StoreError
from backend.settings import Settings, redact_url

log = logging.getLogger(__name__)

ASCENDING = pymongo.ASCENDING
DESCENDING = pymongo.DESCENDING
RETURN_AFTER = pymongo.ReturnDocument.AFTER
RETURN_BEFORE = pymongo.ReturnDocument.BEFORE


class DuplicateKey(StoreError):
    """A unique index refused a write."""

    http_status = 409


def _install_id_lookup() -> None:
    """mongomock scans every document for every query, which makes the per-message lookups of
    the hot path (claim, complete, mark_queued: all by `_id`) O(n). Serve `_id` equality and
    `_id: {$in: [...]}` filters from its id map instead; the rest of the filter still applies."""
    collection_cls = mongomock.collection.Collection
    if getattr(collection_cls, "_fifoq_id_lookup", False):
        return
    original = collection_cls._iter_documents

    def _iter_documents(self: Any, filter: Any) -> Iterator[Any]:  # noqa: A002 - mongomock's name
        ident = filter.get("_id") if isinstance(filter, dict) else None
        ids: list[Any] | None = None
        if isinstance(ident, str):
            ids = [ident]
        elif isinstance(ident, dict) and list(ident) == ["$in"] and all(isinstance(i, str) for i in ident["$in"]):
            ids = list(dict.fromkeys(ident["$in"]))
        if ids is None:
            return original(self, filter)
        store = self._store
        docs = [store[i] for i in ids if i in store]
        # The `_id` condition holds by construction; checking it again costs len(ids) comparisons
        # per document (a batch's mark_queued: 300 x 300).
        rest = {k: v for k, v in filter.items() if k != "_id"}
        return (d for d in docs if not rest or mongomock.filtering.filter_applies(rest, d))

    collection_cls._iter_documents = _iter_documents
    collection_cls._fifoq_id_lookup = True


_install_id_lookup()

@dataclass
class _Embedded:
    """One embedded client, shared by every Store opened on the same mongomock:// URL, with the
    lock that serialises their operations and, per database, the taken (actor, lane, seq) keys."""

    client: Any
    lock: threading.RLock = field(default_factory=threading.RLock)
    seq_keys: dict[str, set[tuple[str, int, int]]] = field(default_factory=dict)


_EMBEDDED_CLIENTS: dict[str, _Embedded] = {}
_EMBEDDED_LOCK = threading.Lock()


class Store:
    """A MongoDB database (real or embedded) plus error translation."""

    def __init__(self, db: Any, *, embedded: bool, shared: _Embedded | None = None) -> None:
        self.db = db
        self.embedded = embedded
        self._shared = shared if shared is not None else (_Embedded(db.client) if embedded else None)
        self._lock = self._shared.lock if self._shared is not None else None

    @classmethod
    def open(cls, settings: Settings) -> "Store":
        """Connect to MONGODB_URL, or to the embedded store when it is empty or mongomock://."""
        url = settings.mongodb_url
        if not url or url.startswith("mongomock://"):
            key = url or "mongomock://default"
            with _EMBEDDED_LOCK:
                shared = _EMBEDDED_CLIENTS.get(key)
                if shared is None:
                    shared = _EMBEDDED_CLIENTS[key] = _Embedded(mongomock.MongoClient())
            return cls(shared.client[settings.mongodb_db], embedded=True, shared=shared)
        log.info("connecting to MongoDB at %s", redact_url(url))
        try:
            client = pymongo.MongoClient(
                url, serverSelectionTimeoutMS=5000, w="majority", retryWrites=True, tz_aware=True
            )
        except (mongo_errors.PyMongoError, ValueError) as exc:
            raise StoreError(f"cannot open MongoDB at {redact_url(url)}: {exc}") from exc
        return cls(client[settings.mongodb_db], embedded=False)

    @contextlib.contextmanager
    def op(self) -> Iterator[Any]:
        """Run store calls: yields the database; raises StoreError / DuplicateKey on failure."""
        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            yield self.db
        except mongo_errors.DuplicateKeyError as exc:
            raise DuplicateKey(str(exc)) from exc
        except mongo_errors.PyMongoError as exc:
            raise StoreError(f"ledger unavailable: {exc}") from exc
        finally:
            if lock is not None:
                lock.release()

    def taken_seq_keys(self) -> set[tuple[str, int, int]]:
        """Embedded store only, called under op(): the (actor, lane, seq) of every stored message.

        mongomock checks a unique index by scanning the whole collection on each write; the ledger
        keeps that rule itself with this set, built once per database and updated on insert."""
        assert self._shared is not None, "only for the embedded store"
        keys = self._shared.seq_keys.get(self.db.name)
        if keys is None:
            keys = self._shared.seq_keys[self.db.name] = {
                (d["actor"], d.get("lane", 0), d["seq"]) for d in self.db.messages.find({}, {"actor": 1, "lane": 1, "seq": 1})
            }
        return keys

    def ping(self) -> None:
        """Raises StoreError when the database does not answer."""
        with self.op() as db:
            if not self.embedded:
                db.client.admin.command("ping")

    def drop(self) -> None:
        """Remove the whole database (tests and demo resets)."""
        with self.op() as db:
            db.client.drop_database(db.name)
            if self._shared is not None:
                self._shared.seq_keys.pop(db.name, None)
