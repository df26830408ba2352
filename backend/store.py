"""MongoDB access: the only module that imports pymongo (and mongomock, its embedded stand-in).

Everything the project keeps (messages, lanes, actors, audit, users) goes through a `Store`.
Callers use a small subset of pymongo's collection API on `store.col(name)` (or `with store.op()
as db: db.<name>`), where

- every call is one operation that is atomic on its own, as one MongoDB operation is on one
  document; nothing spans two calls (no lock is held between them, on any backend), so the
  ledger's correctness never rests on a lock the embedded store would give and MongoDB would not;
- driver errors become the project's errors, deliberately: a unique index refusing a write is
  `DuplicateKey` (also inside a `BulkWriteError`), a write whose fate is unknown (connection lost
  after sending, timeout, primary stepped down, write concern not met) is `OutcomeUnknown`, and
  everything else `StoreError`;
- `find` reads its whole result in one pass (no cursor left open between calls).

Three flavours share that code path:

- MongoDB (`MONGODB_URL=mongodb://...`): pymongo with explicit options (see `mongo_client_options`);
- the embedded store (empty `MONGODB_URL` or `mongomock://name`): mongomock, with a lock per call
  (mongomock's find-and-modify is not atomic across threads, a server's is) and two O(1) lookups
  mongomock lacks (see `_FastCollection`);
- `MONGODB_URL=mongomock+mongodb://name` (`Store.mongomock_as_mongodb()`), for tests: plain
  mongomock, with only the per-call lock, so its own unique indexes and error classes are what
  the ledger meets, as on a server.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import mongomock
import pymongo
from mongomock import collection as mongomock_collection
from mongomock import filtering as mongomock_filtering
from mongomock import helpers
from pymongo import errors as mongo_errors

from backend.errors import DuplicateKey, OutcomeUnknown, StoreError
from backend.settings import Settings, redact_url

log = logging.getLogger(__name__)

ASCENDING = pymongo.ASCENDING
DESCENDING = pymongo.DESCENDING
RETURN_AFTER = pymongo.ReturnDocument.AFTER
RETURN_BEFORE = pymongo.ReturnDocument.BEFORE
# The embedded store overrides private methods of this exact release (its lookups through
# equality maps, its uniqueness check, one copy per document read: _FastCollection, _FastCursor).
MONGOMOCK_VERSION = "4.3.0"
CLOCK_REFRESH_SECONDS = 60.0
# mongomock behind the MongoDB code path: the tests' second ledger backend (see the docstring).
MONGODB_PATH_SCHEME = "mongomock+mongodb://"

__all__ = [
    "ASCENDING", "DESCENDING", "RETURN_AFTER", "RETURN_BEFORE", "DuplicateKey", "OutcomeUnknown",
    "Store", "StoreError", "Update", "mongo_client_options",
]


@dataclass(frozen=True)
class _UpdateResult:
    """What update_one answers (the fields the project reads)."""

    matched_count: int
    modified_count: int


@dataclass(frozen=True)
class Update:
    """One conditional single-document update of a bulk write (`Collection.bulk_update`)."""

    filter: dict[str, Any]
    update: dict[str, Any]


def mongo_client_options(settings: Settings) -> dict[str, Any]:
    """The MongoDB client options, set here rather than left to the URL (they win over it):

    - w=majority: a write is acknowledged once a majority of the replica set has it, so a
      failover never rolls back a transition the ledger acted on;
    - readConcernLevel=majority and readPreference=primary: decisions read what is durable, from
      the node that takes the writes;
    - retryWrites/retryReads: the driver retries once across a failover; every ledger write is
      conditional, so a retried write that had been applied matches nothing the second time;
    - timeoutMS (MONGODB_TIMEOUT_MS): one deadline per operation, server selection and write
      concern included; past it the write's outcome is unknown (OutcomeUnknown).
    """
    timeout_ms = int(settings.mongodb_timeout_ms)
    return {
        "w": "majority",
        "readConcernLevel": "majority",
        "readPreference": "primary",
        "retryWrites": True,
        "retryReads": True,
        "timeoutMS": timeout_ms,
        "serverSelectionTimeoutMS": timeout_ms,
        "tz_aware": True,
        "appname": "fifoq",
    }


# -- error translation ---------------------------------------------------------------------------
def _duplicate_positions(details: dict[str, Any]) -> list[int] | None:
    """Positions refused by unique indexes, or None if any write error has another cause."""
    errors = details.get("writeErrors") or []
    if not errors or any(e.get("code") != 11000 for e in errors):
        return None
    return [int(e.get("index", 0)) for e in errors]


def translate(exc: BaseException, *, write: bool) -> StoreError:
    """Map one driver error to the project's error tree (see the module docstring)."""
    if isinstance(exc, mongo_errors.BulkWriteError):
        details: dict[str, Any] = dict(exc.details or {})
        if details.get("writeConcernErrors"):
            return OutcomeUnknown(f"ledger write concern not satisfied: {details['writeConcernErrors'][0].get('errmsg')}")
        positions = _duplicate_positions(details)
        if positions is not None:
            return DuplicateKey(f"E11000 duplicate key ({len(positions)} of the batch)", positions)
        first = (details.get("writeErrors") or [{}])[0]
        return StoreError(f"ledger write refused: {first.get('code')} {first.get('errmsg')}")
    if isinstance(exc, mongo_errors.DuplicateKeyError):
        return DuplicateKey(str(exc))
    if isinstance(exc, mongo_errors.ServerSelectionTimeoutError):
        # Nothing was sent: no primary could be reached in time.
        return StoreError(f"ledger unavailable (no primary): {exc}")
    if isinstance(exc, (mongo_errors.WriteConcernError, mongo_errors.ConnectionFailure, mongo_errors.ExecutionTimeout)) or (
        isinstance(exc, mongo_errors.PyMongoError) and exc.timeout
    ):
        if write:
            return OutcomeUnknown(f"ledger write outcome unknown: {type(exc).__name__}: {exc}")
        return StoreError(f"ledger unavailable: {type(exc).__name__}: {exc}")
    return StoreError(f"ledger error: {type(exc).__name__}: {exc}")


# -- fault injection (tests) ----------------------------------------------------------------------
class ProcessCrash(BaseException):
    """Raised by a FaultPlan to stand for the process dying: not an Exception, so no handler in
    the code under test catches it; every later call through the same Store raises it too."""


class FaultPlan:
    """Counts the writes made through one Store and, at write number `at` (1-based), makes it
    (a) raise before it is applied ("fail"), (b) raise after it was applied ("unknown"), or
    (c) apply it, then kill the process ("crash"). `at=None` only counts.

    The errors raised are pymongo's own, so the Store's translation is exercised too."""

    MODES = ("fail", "unknown", "crash")

    def __init__(self, at: int | None = None, mode: str = "fail", error: Callable[[], BaseException] | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(mode)
        self.at, self.mode = at, mode
        self.error = error or (lambda: mongo_errors.AutoReconnect("injected: connection closed"))
        self.writes: list[str] = []
        self.dead = False
        self.hit = False
        self._lock = threading.Lock()

    def before(self, what: str) -> str | None:
        """Called before a write; returns the mode to apply after it, if any."""
        with self._lock:
            if self.dead:
                raise ProcessCrash(f"process already dead (before {what})")
            self.writes.append(what)
            if self.at is None or len(self.writes) != self.at:
                return None
            self.hit = True
            if self.mode == "fail":
                raise self.error()
            if self.mode == "crash":
                self.dead = True
            return self.mode

    def check_alive(self, what: str) -> None:
        if self.dead:
            raise ProcessCrash(f"process already dead ({what})")


# -- measuring (benchmarks) ----------------------------------------------------------------------
class OperationMeter:
    """Counts the store's calls and adds a latency to each (benchmarks: `python -m bench ledger
    --ledger-latency MS` models a MongoDB replica set on a LAN). The latency is slept outside the
    embedded store's lock, so calls made concurrently overlap as they would on a network."""

    def __init__(self) -> None:
        self.on = False
        self.latency = 0.0
        self.calls: list[tuple[float, int, str, str, bool]] = []  # (time, thread, collection, what, write)
        self._lock = threading.Lock()
        self._sleep_for = 0.0
        self._slept = 0.0
        self._calibrated: dict[float, float] = {}  # latency asked -> what to sleep for it
        self.sleep, self.clock = time.sleep, time.perf_counter  # (a test gives a fake clock)

    def start(self, latency: float = 0.0) -> None:
        """Count from now on, adding `latency` seconds to each call. A sleep lasts longer than
        asked (2.14 ms for 2 ms on a machine here): the overshoot is measured first and taken off
        each sleep, so that the latency added is the one asked for on average (see added())."""
        with self._lock:
            self.calls = []
            self._slept = 0.0
        self._sleep_for = self.calibrate(latency)
        self.latency, self.on = latency, True

    def calibrate(self, latency: float) -> float:
        """What to sleep for `latency`: measured once per latency (call it before a timed run)."""
        if latency and latency not in self._calibrated:
            began = self.clock()
            for _ in range(CALIBRATION_SLEEPS):
                self.sleep(latency)
            overshoot = (self.clock() - began) / CALIBRATION_SLEEPS - latency
            self._calibrated[latency] = max(0.0, latency - overshoot)
        return self._calibrated.get(latency, 0.0)

    def stop(self) -> list[tuple[float, int, str, str, bool]]:
        self.on = False
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def added(self, calls: int) -> float:
        """The latency added to each of the last run's `calls` calls, on average (seconds)."""
        return self._slept / calls if calls else 0.0

    def record(self, collection: str, what: str, write: bool) -> None:
        with self._lock:
            self.calls.append((time.monotonic(), threading.get_ident(), collection, what, write))
        if self.latency:
            began = self.clock()
            self.sleep(self._sleep_for)
            slept = self.clock() - began
            with self._lock:
                self._slept += slept


CALIBRATION_SLEEPS = 50


METER = OperationMeter()


# -- the embedded store's O(1) lookups --------------------------------------------------------------
_ATOMS = (str, int, float, bool, type(None), bytes)


def _copy_document(value: Any, container: Any, aware: bool) -> Any:
    """A copy of a stored value as a mongomock cursor returns it: mappings as `container`, lists
    and tuples as lists, datetimes (stored naive, in UTC) made aware when `aware`, the immutable
    atoms shared instead of copied one by one."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is datetime:
        return value.replace(tzinfo=helpers.utc) if aware else value
    if isinstance(value, dict):  # upserted documents are stored as OrderedDicts
        new = container()
        for key, item in value.items():
            new[key] = item if type(item) in _ATOMS else _copy_document(item, container, aware)
        return new
    if isinstance(value, (list, tuple)):
        return [item if type(item) in _ATOMS else _copy_document(item, container, aware) for item in value]
    out = mongomock_collection._copy_field(value, container)
    return helpers.make_datetime_timezone_aware_in_document(out) if aware else out


class _FastCursor(mongomock_collection.Cursor):
    """mongomock's cursor over a _FastCollection, whose documents come out of
    _FastCollection._copy_only_fields already copied and made aware: it does not copy them again."""

    def _compute_results(self, with_limit_and_skip: bool = False) -> Any:
        if not self._results or self._factory_last_generated_results != self._factory:
            self._results = list(self._factory())
            self._factory_last_generated_results = self._factory
        results = self._results
        if with_limit_and_skip:
            results = results[self._skip:]
            if self._limit:
                results = results[:abs(self._limit)]
        return results

    def __next__(self) -> Any:
        # mongomock slices the skipped and limited results again for every document it returns
        # (a read of n documents copies n lists of up to n): here the position is computed.
        results = self._compute_results()
        if self._limit and self._emitted >= abs(self._limit):
            raise StopIteration
        at = self._skip + self._emitted
        if at >= len(results):
            raise StopIteration
        self._emitted += 1
        return results[at]

    next = __next__


class _FastCollection(mongomock_collection.Collection):
    """mongomock, with the lookups the ledger needs made proportional to what they find.

    mongomock scans (and copies) every document of a collection for every query, including a
    lookup by `_id` and each unique-index check on insert. This subclass serves

    - `_id` equality and `_id: {$in: [...]}` filters from mongomock's id map;
    - an equality on the first field of a declared index (`actor`, `correlation_id`) from a map
      of that field's values to the ids holding them, kept as documents are inserted;
    - the same on any field of a declared index once a document holds a list there (a multikey
      field, as MongoDB calls it: the message's search `terms`): each string of the list is a
      key, so `{field: word}` and `{field: {$all: words}}` cost the documents holding one word;
    - unique indexes from a map of the keys it has seen;

    every candidate checked against the filter and the stored document, so a scalar value an
    update leaves behind only costs a wasted check; a list's elements are kept per document, so
    an update that changes the list takes out the ones it dropped. A delete takes the document's
    entries out of every map (else they would grow with every message ever stored, whatever the
    retention). It overrides private methods of mongomock 4.3.0, which pyproject.toml pins
    exactly; tests/test_store_contract.py fails if the installed version moves.
    """

    def find(self, *args: Any, **kwargs: Any) -> Any:
        cursor = super().find(*args, **kwargs)
        cursor.__class__ = _FastCursor  # the same cursor, without its second copy (below)
        return cursor

    def _insert(self, data: Any, session: Any = None, ordered: bool = True) -> Any:
        """mongomock 4.3.0's insert of one document (a list comes back here one by one), with
        the stored copy made by _as_stored instead of mongomock's generic rebuild of every value
        (a third of an insert's time): the same checks, the same stored document."""
        if session or not isinstance(data, dict):
            return super()._insert(data, session, ordered=ordered)
        if not all(isinstance(k, str) for k in data):
            raise ValueError("Document keys must be strings")
        mongomock_collection._validate_data_fields(data)
        mongomock_collection.BSON.encode(data, check_keys=False)  # refuses what BSON cannot hold
        if "_id" not in data:
            data["_id"] = mongomock.ObjectId()
        object_id = data["_id"]
        if isinstance(object_id, dict):
            object_id = helpers.hashdict(object_id)
        if object_id in self._store:
            raise mongomock.DuplicateKeyError("E11000 Duplicate Key Error", 11000)
        data = _as_stored(data)
        self._store[object_id] = data
        try:
            self._ensure_uniques(data)
        except mongomock.DuplicateKeyError:
            del self._store[object_id]
            raise
        return data["_id"]

    def _copy_only_fields(self, doc: Any, fields: Any, container: Any) -> Any:
        # mongomock copies every value of every document a cursor returns (through copy.copy,
        # atoms included), then its cursor rebuilds every dict and list of it again to make its
        # datetimes aware (the store's codec is tz_aware). Here a document is copied once, its
        # datetimes made aware on the way (when the codec says so) and its immutable atoms
        # shared, and _FastCursor skips the second pass. Projections that only leave top-level
        # fields out are done here too; any other goes to mongomock, its result made aware.
        aware = bool(self.codec_options.tz_aware)
        if fields is None or fields == {}:
            return _copy_document(doc, container, aware)
        if (isinstance(fields, dict) and all(v == 0 for v in fields.values())
                and not any("." in k or k.startswith("$") for k in fields)):
            new = container()
            for key, value in doc.items():
                if key not in fields:
                    new[key] = _copy_document(value, container, aware)
            return new
        out = super()._copy_only_fields(doc, fields, container)
        return helpers.make_datetime_timezone_aware_in_document(out) if aware else out

    def _iter_documents(self, filter: Any) -> Iterator[Any]:
        ids = self._candidates(filter) if isinstance(filter, dict) else None
        if ids is None:
            return super()._iter_documents(filter)
        store = self._store
        docs = [store[i] for i in ids if i in store]
        rest = {k: v for k, v in filter.items() if k != "_id"}
        return (d for d in docs if not rest or mongomock_filtering.filter_applies(rest, d))

    def _candidates(self, filter: dict[str, Any]) -> list[Any] | None:
        ident = filter.get("_id")
        if isinstance(ident, str):
            return [ident]
        if isinstance(ident, dict) and list(ident) == ["$in"] and all(isinstance(i, str) for i in ident["$in"]):
            return list(dict.fromkeys(ident["$in"]))
        best: dict[Any, None] | None = None
        for name, held in self._equality_maps().items():
            for value in _wanted_keys(filter.get(name)):
                ids = held.get(value, {})
                if best is None or len(ids) < len(best):
                    best = ids
        return None if best is None else list(best)  # in insertion order, as mongomock's scan

    def _equality_maps(self) -> dict[str, dict[Any, dict[Any, None]]]:
        """{field: {value: ids (an ordered set)}} for the first field of every declared index
        (and the multikey fields, see _note_multikey), built once, then kept as documents are
        written."""
        maps: dict[str, dict[Any, dict[Any, None]]] = self.__dict__.setdefault("_fifoq_equal", {})
        for name, index in self._store.indexes.items():
            field = index["key"][0][0]
            if name == "_id_" or field in maps or "." in field:
                continue
            maps[field] = self._build_map(field)
        return maps

    def _build_map(self, field: str) -> dict[Any, dict[Any, None]]:
        held: dict[Any, dict[Any, None]] = {}
        lists = self._list_keys().get(field)
        for doc in self._store.documents:
            keys = _map_keys(doc.get(field))
            for key in keys:
                held.setdefault(key, {})[doc["_id"]] = None
            if lists is not None and keys:
                lists[doc["_id"]] = tuple(keys)
        return held

    def _list_keys(self) -> dict[str, dict[Any, tuple[Any, ...]]]:
        """{multikey field: {id: the keys its document is registered under}}: what an update
        that changes the list takes out."""
        keys: dict[str, dict[Any, tuple[Any, ...]]] = self.__dict__.setdefault("_fifoq_lists", {})
        return keys

    def _note_multikey(self, doc: dict[str, Any]) -> None:
        """A list in a field of a declared index makes it a multikey field: mapped from now on
        (built from every stored document once), its keys kept per document."""
        lists = self._list_keys()
        for name, index in self._store.indexes.items():
            if name == "_id_":
                continue
            for path, _ in index["key"]:
                if path not in lists and "." not in path and path != "_id" and isinstance(doc.get(path), list):
                    lists[path] = {}
                    self._equality_maps()[path] = self._build_map(path)

    def _delete(self, filter: Any, collation: Any = None, hint: Any = None, multi: bool = False,
                session: Any = None) -> Any:
        # mongomock's delete (one find, then each match removed by id), which also forgets each
        # removed document in the equality maps and the unique keys.
        if hint or collation or session:
            return super()._delete(filter, collation=collation, hint=hint, multi=multi, session=session)
        filter = helpers.patch_datetime_awareness_in_document(filter)
        if filter is None:
            filter = {}
        if not isinstance(filter, dict):
            filter = {"_id": filter}
        victims = [doc for doc in self._iter_documents(filter) if mongomock_filtering.filter_applies(filter, doc)]
        if not multi:
            victims = victims[:1]
        for doc in victims:
            del self._store[doc["_id"]]
            self._forget(doc)
        return {"connectionId": self.database.client._id, "n": len(victims), "ok": 1.0, "err": None}

    def _forget(self, doc: dict[str, Any]) -> None:
        ident = doc["_id"]
        lists = self.__dict__.get("_fifoq_lists", {})
        for key, held in self.__dict__.get("_fifoq_equal", {}).items():
            registered = set(_map_keys(doc.get(key)))
            if key in lists:
                registered.update(lists[key].pop(ident, ()))
            _unregister(held, registered, ident)
        seen: dict[str, dict[tuple[Any, ...], Any]] = self.__dict__.get("_fifoq_unique", {})
        for name, keys in seen.items():
            index = self._store.indexes.get(name)
            if index is None:
                continue
            key = tuple(_dotted(doc, f) for f, _ in index["key"])
            if keys.get(key) == ident:
                del keys[key]

    def _ensure_uniques(self, new_data: Any) -> None:
        # Called by mongomock after every insert and update: check the unique indexes, then (the
        # write stands) record its keys and its values in the equality maps. A refused insert
        # records nothing, so that mongomock's rollback leaves nothing behind.
        seen: dict[str, dict[tuple[Any, ...], Any]] = self.__dict__.setdefault("_fifoq_unique", {})
        store = self._store
        ident = new_data["_id"]
        claimed: list[tuple[dict[tuple[Any, ...], Any], tuple[Any, ...]]] = []
        for name, index in store.indexes.items():
            if not index.get("unique") or name == "_id_":
                continue
            fields = [k for k, _ in index["key"]]
            key = tuple(_dotted(new_data, f) for f in fields)
            if index.get("sparse") and all(v is None for v in key):
                continue
            keys = seen.setdefault(name, {})
            holder = keys.get(key)
            if holder is not None and holder != ident and holder in store:
                other = store[holder]
                if tuple(_dotted(other, f) for f in fields) == key:
                    raise mongo_errors.DuplicateKeyError("E11000 Duplicate Key Error", 11000)
            claimed.append((keys, key))
        for keys, key in claimed:
            keys[key] = ident
        self._note_multikey(new_data)
        lists = self._list_keys()
        for name, held in self.__dict__.get("_fifoq_equal", {}).items():
            now = _map_keys(new_data.get(name))
            if name in lists:  # a list may have lost elements: take them out
                before = lists[name].pop(ident, ())
                _unregister(held, set(before) - set(now), ident)
                if now:
                    lists[name][ident] = tuple(now)
            for value in now:
                held.setdefault(value, {})[ident] = None

    # -- updates by id, in place (the hot path's claims, settles and folds) -----------------
    def fast_update(self, filter: Any, update: Any, want: str | None = None, projection: Any = None) -> Any:
        """An update of one document named by its `_id`, applied in place: mongomock's own update
        deep-copies the document and re-encodes every value it sets (about 0.4 ms per claim or
        settle of a message with its attempt log). Only what the ledger sends is handled here
        ($set, $unset, $inc, $min, $max, $push with $each/$slice, $pull of a matching element, no
        upsert, no field of a unique index); anything else returns NOT_FAST and goes to mongomock.
        tests/test_store_contract.py runs the same updates on plain mongomock and compares.

        `want`: None, "before" or "after": the document to return (as find_one would).
        Returns (matched, modified, document or None)."""
        ident = filter.get("_id") if isinstance(filter, dict) else None
        if not isinstance(ident, str) or not isinstance(update, dict) or not update or not set(update) <= _FAST_OPS:
            return NOT_FAST
        # One pass over the update: (operator, path's parts, value), and what it touches.
        steps: list[tuple[str, list[str], Any]] = []
        touched: set[str] = set()
        arrays: set[str] = set()
        for op, fields in update.items():
            if type(fields) is not dict:
                return NOT_FAST
            for path, value in fields.items():
                parts = path.split(".") if "." in path else [path]
                touched.add(parts[0])
                if op in ("$push", "$pull") or isinstance(value, list):
                    arrays.add(parts[0])
                steps.append((op, parts, value))
        indexed, in_any_index = self._indexed_fields_now()
        if touched & indexed or "_id" in touched:
            return NOT_FAST  # mongomock's update keeps the unique keys and the equality maps
        if arrays and arrays & in_any_index:
            return NOT_FAST  # an array into an indexed field: it may become a multikey field
        # The caller holds the store's lock (Collection._call): read the id map directly,
        # after what mongomock's own read does first (expire documents past a TTL index).
        store = self._store
        if store._ttl_indexes:
            store._remove_expired_documents()
        doc = store._documents.get(ident)
        if doc is None or not _filter_applies(filter, doc):
            return False, False, None
        if not all(_plain_parts(doc, parts) for _op, parts, _value in steps):
            return NOT_FAST  # into an array, or a positional operator: mongomock's own way
        before = self.find_one({"_id": ident}, projection) if want == "before" else None
        modified = False
        times: dict[datetime, datetime] = {}  # a transition sets the same instant in several fields
        for op, parts, value in steps:
            modified |= _apply(doc, op, parts, _as_stored(value, times))
        after = self.find_one({"_id": ident}, projection) if want == "after" else None
        return True, modified, before if want == "before" else after

    def _indexed_fields_now(self) -> tuple[set[str], set[str]]:
        """(_indexed_fields, _all_indexed_fields), computed again only when the collection's
        indexes or its multikey fields change."""
        indexes = self._store.indexes
        signature = (tuple((name, id(index)) for name, index in indexes.items()),
                     tuple(self.__dict__.get("_fifoq_lists", ())))
        cached = self.__dict__.get("_fifoq_indexed")
        if cached is None or cached[0] != signature:
            cached = (signature, (self._indexed_fields(), self._all_indexed_fields()))
            self.__dict__["_fifoq_indexed"] = cached
        return cached[1]

    def _indexed_fields(self) -> set[str]:
        """Fields of a unique index, first fields of any index, and the multikey fields."""
        out = {k.split(".")[0] for name, index in self._store.indexes.items()
               if index.get("unique") and name != "_id_" for k, _ in index["key"]}
        out |= set(self.__dict__.get("_fifoq_lists", {}))
        return out | {index["key"][0][0].split(".")[0] for name, index in self._store.indexes.items() if name != "_id_"}

    def _all_indexed_fields(self) -> set[str]:
        return {k.split(".")[0] for name, index in self._store.indexes.items() if name != "_id_" for k, _ in index["key"]}


def _map_keys(value: Any) -> list[Any]:
    """The keys a stored value is found under in an equality map: a string, or each distinct
    string of a list (an equality on an array field matches any of its elements)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return list(dict.fromkeys(v for v in value if isinstance(v, str)))
    return []


def _wanted_keys(value: Any) -> list[Any]:
    """The map keys that a filter's condition on one field needs a document to have (any one of
    them narrows the candidates): `value`, or every word of `{"$all": [...]}`."""
    if isinstance(value, str):
        return [value]
    if (isinstance(value, dict) and list(value) == ["$all"] and isinstance(value["$all"], list) and value["$all"]
            and all(isinstance(v, str) for v in value["$all"])):
        return list(value["$all"])
    return []


def _unregister(held: dict[Any, dict[Any, None]], keys: Any, ident: Any) -> None:
    for key in keys:
        ids = held.get(key)
        if ids is not None:
            ids.pop(ident, None)
            if not ids:
                del held[key]


def _as_stored(value: Any, times: dict[datetime, datetime] | None = None) -> Any:
    """A value as the store keeps it (helpers.patch_datetime_awareness_in_document: datetimes
    naive in UTC at millisecond precision, tuples as lists), the immutable atoms returned as
    they are instead of being dispatched through every type test. `times`: datetimes already
    converted (equal instants are stored alike, whatever their time zone)."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is datetime:
        if times is not None:
            done = times.get(value)
            if done is None:
                done = times[value] = _as_stored(value)
            return done
        offset = value.utcoffset()
        if offset is not None:
            value = value - offset
        return value.replace(tzinfo=None, microsecond=value.microsecond // 1000 * 1000)
    if kind is dict:
        return {k: v if type(v) in _ATOMS else _as_stored(v, times) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _ATOMS else _as_stored(v, times) for v in value]
    return helpers.patch_datetime_awareness_in_document(value)


_EQUALITY_ATOMS = (str, int, type(None))


def _filter_applies(filter: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Does `filter` (its `_id` already matched) match the stored `doc`? The shapes of the
    fenced writes' filters are compared here (see _simple_match); anything else goes through
    mongomock's matcher."""
    found = _simple_match(filter, doc, top=True)
    if found is not None:
        return found
    rest = {k: v for k, v in filter.items() if k != "_id"}
    return bool(mongomock_filtering.filter_applies(_as_stored(rest), doc))


def _simple_match(filter: dict[str, Any], doc: dict[str, Any], top: bool = False) -> bool | None:
    """Match a filter made of top-level equalities on strings, ints and null, `$in` of those,
    `$ne: null` and `$or` of such branches (a branch of another shape asks mongomock). None:
    some part of it is of another shape (or compares an array, or an int with a float)."""
    for key, want in filter.items():
        if top and key == "_id":
            continue
        if key == "$or":
            hit = _any_branch(want, doc)
        elif "." in key or key.startswith("$"):
            return None
        else:
            hit = _field_match(doc.get(key), want)
        if hit is None:
            return None
        if not hit:
            return False
    return True


def _any_branch(branches: Any, doc: dict[str, Any]) -> bool | None:
    if type(branches) is not list:
        return None
    for branch in branches:
        hit = _simple_match(branch, doc) if type(branch) is dict else None
        if hit is None:
            hit = bool(mongomock_filtering.filter_applies(_as_stored(branch), doc))
        if hit:
            return True
    return False


def _field_match(have: Any, want: Any) -> bool | None:
    """One field's condition: an atom (equality), {"$in": [atoms]} or {"$ne": None}."""
    if type(want) in _EQUALITY_ATOMS:
        return _equal(have, want)
    if type(want) is not dict or len(want) != 1:
        return None
    op, arg = next(iter(want.items()))
    if op == "$ne" and arg is None:
        return have is not None
    if op != "$in" or type(arg) is not list or not all(type(a) in _EQUALITY_ATOMS for a in arg):
        return None
    hits = [_equal(have, a) for a in arg]
    return True if True in hits else (None if None in hits else False)


def _equal(have: Any, want: Any) -> bool | None:
    """Equality of a stored value with a string, int or null; None: ask mongomock (an array,
    which matches by its elements, or a number or bool of another type)."""
    if want is None:
        return have is None
    kind = type(have)
    if kind is type(want):
        return bool(have == want)
    if kind in (list, float, bool) or type(want) is bool:
        return None  # mongomock compares these its own (Python's) way: the store stays consistent
    return False  # another type: never equal (a string is not a number, nor a document)


def _id_list(filter: Any) -> list[str] | None:
    """The distinct ids of a filter `{"_id": {"$in": [strings]}, ...}`; None for another shape."""
    want = filter.get("_id") if isinstance(filter, dict) else None
    if type(want) is not dict or list(want) != ["$in"] or type(want["$in"]) is not list:
        return None
    ids = want["$in"]
    if not all(type(i) is str for i in ids):
        return None
    return list(dict.fromkeys(ids))


def _update_one(raw: Any, filter: Any, update: Any) -> int:
    """update_one on mongomock (the fast path when it applies): how many documents it modified."""
    if isinstance(raw, _FastCollection):
        done = raw.fast_update(filter, update)
        if done is not NOT_FAST:
            return int(done[1])
    return int(raw.update_one(filter, update).modified_count)


NOT_FAST = object()
_FAST_OPS = {"$set", "$unset", "$inc", "$min", "$max", "$push", "$pull"}
_MISSING = object()


def _plain_parts(doc: dict[str, Any], parts: list[str]) -> bool:
    """Does the path of these parts go through documents only (no array element, no `$`
    operator)?"""
    if any(p.startswith("$") or p.isdigit() for p in parts):
        return False
    for part in parts[:-1]:
        nxt = doc.get(part, _MISSING)
        if nxt is _MISSING:
            return True
        if not isinstance(nxt, dict):
            return False
        doc = nxt
    return True


def _parent(doc: dict[str, Any], parts: list[str], create: bool) -> dict[str, Any] | None:
    for part in parts[:-1]:
        nxt = doc.get(part)
        if not isinstance(nxt, dict):
            if not create or part in doc:
                return None
            nxt = doc[part] = {}
        doc = nxt
    return doc


def _apply(doc: dict[str, Any], op: str, parts: list[str], value: Any) -> bool:
    """One operator on one field of a stored document, in place. True if it changed it."""
    parent = _parent(doc, parts, create=op not in ("$unset", "$pull"))
    if parent is None:
        return False
    return _OPERATORS[op](parent, parts[-1], parent.get(parts[-1], _MISSING), value)


def _set(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    if current is not _MISSING and current == value and type(current) is type(value):
        return False
    parent[key] = value
    return True


def _unset(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    if current is _MISSING:
        return False
    del parent[key]
    return True


def _inc(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    parent[key] = value if current is _MISSING else current + value
    return bool(value) or current is _MISSING


def _min(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    if current is None or (current is not _MISSING and not value < current):
        return False  # BSON orders null before every value
    parent[key] = value
    return True


def _max(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    if current is not _MISSING and current is not None and not value > current:
        return False
    parent[key] = value
    return True


def _push(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    if current is not _MISSING and not isinstance(current, list):
        raise mongo_errors.WriteError(f"The field '{key}' must be an array", 2)
    items: list[Any] = parent.setdefault(key, []) if current is _MISSING else list_of(current)
    if isinstance(value, dict) and "$each" in value:
        items.extend(value["$each"])
        if "$slice" in value:
            cut = int(value["$slice"])
            items[:] = items[cut:] if cut < 0 else items[:cut]
    else:
        items.append(value)
    return True


def _pull(parent: dict[str, Any], key: str, current: Any, value: Any) -> bool:
    if not isinstance(current, list):
        return False
    if isinstance(value, dict):
        kept = [i for i in current if not (isinstance(i, dict) and all(i.get(k) == v for k, v in value.items()))]
    else:
        kept = [i for i in current if i != value]
    if len(kept) == len(current):
        return False
    current[:] = kept
    return True


def list_of(value: Any) -> list[Any]:
    assert isinstance(value, list)
    return value


_OPERATORS: dict[str, Callable[[dict[str, Any], str, Any, Any], bool]] = {
    "$set": _set, "$unset": _unset, "$inc": _inc, "$min": _min, "$max": _max, "$push": _push, "$pull": _pull,
}


def _dotted(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


# -- one collection, one atomic call at a time -----------------------------------------------------
def _own(projection: Any) -> Any:
    """A copy of a projection for the driver: mongomock adds `_id` to the one it is given, which
    would change the caller's (often a module's constant)."""
    return dict(projection) if isinstance(projection, dict) else projection


class Cursor:
    """The result of `find`: chain sort/skip/limit, then iterate; the query runs once, in one call."""

    def __init__(self, col: Collection, filter: dict[str, Any], projection: Any) -> None:
        self._col, self._filter, self._projection = col, filter, _own(projection)
        self._sort: list[tuple[str, int]] | None = None
        self._skip = 0
        self._limit = 0
        self._rows: list[dict[str, Any]] | None = None

    def sort(self, key: str | list[tuple[str, int]], direction: int | None = None) -> Cursor:
        self._sort = [(key, direction or ASCENDING)] if isinstance(key, str) else list(key)
        return self

    def skip(self, n: int) -> Cursor:
        self._skip = max(0, int(n))
        return self

    def limit(self, n: int) -> Cursor:
        self._limit = max(0, int(n))
        return self

    def _run(self) -> list[dict[str, Any]]:
        if self._rows is None:
            kwargs: dict[str, Any] = {"skip": self._skip, "limit": self._limit}
            if self._sort:
                kwargs["sort"] = self._sort
            self._rows = self._col._call("find", False, lambda raw: list(raw.find(self._filter, self._projection, **kwargs)))
        return self._rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._run())


class Collection:
    """A collection of a Store: pymongo's API subset the project uses, each call atomic and
    translated. See the module docstring."""

    def __init__(self, raw: Any, lock: threading.Lock | None, faults: FaultPlan | None) -> None:
        self.raw = raw
        self.name = raw.name
        self._lock = lock
        self._faults = faults

    def _call(self, what: str, write: bool, fn: Callable[[Any], Any]) -> Any:
        faults = self._faults
        after = None
        lock = self._lock
        if METER.on:
            METER.record(self.name, what, write)
        try:
            if faults is not None:
                if write:
                    after = faults.before(f"{self.name}.{what}")
                else:
                    faults.check_alive(f"{self.name}.{what}")
            if lock is not None:
                with lock:
                    result = fn(self.raw)
            else:
                result = fn(self.raw)
        except mongo_errors.PyMongoError as exc:
            raise translate(exc, write=write) from exc
        if after == "unknown":
            raise translate(mongo_errors.NetworkTimeout("injected: no answer after the write was applied"), write=True)
        if after == "crash":
            raise ProcessCrash(f"process died after {self.name}.{what}")
        return result

    # -- reads
    def find_one(self, filter: dict[str, Any] | None = None, projection: Any = None, **kw: Any) -> dict[str, Any] | None:
        return self._call("find_one", False, lambda raw: raw.find_one(filter or {}, _own(projection), **kw))

    def find(self, filter: dict[str, Any] | None = None, projection: Any = None) -> Cursor:
        return Cursor(self, filter or {}, projection)

    def count_documents(self, filter: dict[str, Any], **kw: Any) -> int:
        return int(self._call("count_documents", False, lambda raw: raw.count_documents(filter, **kw)))

    def aggregate(self, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._call("aggregate", False, lambda raw: list(raw.aggregate(pipeline)))

    def index_information(self) -> dict[str, Any]:
        return self._call("index_information", False, lambda raw: raw.index_information())

    # -- writes
    def insert_one(self, doc: dict[str, Any]) -> Any:
        return self._call("insert_one", True, lambda raw: raw.insert_one(doc))

    def insert_many(self, docs: Sequence[dict[str, Any]], ordered: bool = True) -> Any:
        return self._call("insert_many", True, lambda raw: raw.insert_many(list(docs), ordered=ordered))

    def update_one(self, filter: dict[str, Any], update: dict[str, Any], upsert: bool = False) -> Any:
        def run(raw: Any) -> Any:
            if not upsert and isinstance(raw, _FastCollection):
                done = raw.fast_update(filter, update)
                if done is not NOT_FAST:
                    return _UpdateResult(int(done[0]), int(done[1]))
            return raw.update_one(filter, update, upsert=upsert)

        return self._call("update_one", True, run)

    def replace_one(self, filter: dict[str, Any], doc: dict[str, Any], upsert: bool = False) -> Any:
        return self._call("replace_one", True, lambda raw: raw.replace_one(filter, doc, upsert=upsert))

    def update_many(self, filter: dict[str, Any], update: dict[str, Any]) -> Any:
        def run(raw: Any) -> Any:
            ids = _id_list(filter) if isinstance(raw, _FastCollection) else None
            if ids is None:
                return raw.update_many(filter, update)
            # Documents named by a list of ids (the publish confirms): each updated by id, in
            # place, instead of mongomock's scan of the whole collection for an `$in`. As on a
            # server, each document matches and is updated on its own.
            matched = modified = 0
            for ident in ids:
                one = dict(filter, _id=ident)
                done = raw.fast_update(one, update)
                if done is NOT_FAST:
                    result = raw.update_one(one, update)
                    done = (result.matched_count, result.modified_count)
                matched += int(done[0])
                modified += int(done[1])
            return _UpdateResult(matched, modified)

        return self._call("update_many", True, run)

    def find_one_and_update(self, filter: dict[str, Any], update: dict[str, Any], **kw: Any) -> dict[str, Any] | None:
        if "projection" in kw:
            kw["projection"] = _own(kw["projection"])

        def run(raw: Any) -> Any:
            if isinstance(raw, _FastCollection) and not kw.get("upsert") and set(kw) <= {"return_document", "projection"}:
                want = "after" if kw.get("return_document") == RETURN_AFTER else "before"
                done = raw.fast_update(filter, update, want, kw.get("projection"))
                if done is not NOT_FAST:
                    return done[2]
            return raw.find_one_and_update(filter, update, **kw)

        return self._call("find_one_and_update", True, run)

    def delete_one(self, filter: dict[str, Any]) -> Any:
        return self._call("delete_one", True, lambda raw: raw.delete_one(filter))

    def delete_many(self, filter: dict[str, Any]) -> Any:
        return self._call("delete_many", True, lambda raw: raw.delete_many(filter))

    def bulk_update(self, updates: Sequence[Update]) -> int:
        """Several conditional updates, in order, in one round trip; returns how many documents
        they modified in all (a server does not say which ones: read back when it matters).

        On MongoDB one ordered bulk write; mongomock's bulk API does not accept pymongo's
        operations, so there the updates run one by one within the same call."""
        if not updates:
            return 0

        def run(raw: Any) -> int:
            if isinstance(raw, mongomock_collection.Collection):
                return sum(_update_one(raw, u.filter, u.update) for u in updates)
            result = raw.bulk_write([pymongo.UpdateOne(u.filter, u.update) for u in updates], ordered=True)
            return int(result.modified_count)

        return int(self._call("bulk_update", True, run))

    def create_index(self, keys: list[tuple[str, int]], **kw: Any) -> str:
        return self._call("create_index", False, lambda raw: raw.create_index(keys, **kw))

    def drop_index(self, name: str) -> None:
        self._call("drop_index", False, lambda raw: raw.drop_index(name))


class _Database:
    """`db.<name>` and `db[name]` give the Store's collections."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.name = store.name
        self.client = store.client

    def __getattr__(self, name: str) -> Collection:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._store.col(name)

    def __getitem__(self, name: str) -> Collection:
        return self._store.col(name)


@dataclass
class _Embedded:
    """One embedded client, shared by every Store opened on the same mongomock:// URL."""

    client: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    collections: dict[tuple[str, str], Any] = field(default_factory=dict)


_EMBEDDED_CLIENTS: dict[str, _Embedded] = {}
_EMBEDDED_LOCK = threading.Lock()


class Store:
    """A MongoDB database (real, embedded, or mongomock posing as a server). See the module
    docstring. `faults` (tests) injects write failures and crashes into this Store's calls."""

    def __init__(self, client: Any, name: str, *, embedded: bool, lock: threading.Lock | None,
                 shared: _Embedded | None = None, fast: bool = False, faults: FaultPlan | None = None) -> None:
        self.client = client
        self.name = name
        self.embedded = embedded
        self.faults = faults
        self._lock = lock
        self._shared = shared
        self._fast = fast
        self._raw_db = client[name]
        self._cols: dict[str, Collection] = {}
        self._clock_offset = timedelta(0)
        self._clock_read = float("-inf")
        self.db = _Database(self)

    @classmethod
    def open(cls, settings: Settings, faults: FaultPlan | None = None) -> Store:
        """Connect to MONGODB_URL, or to the embedded store when it is empty or mongomock://."""
        url = settings.mongodb_url
        if url.startswith(MONGODB_PATH_SCHEME):
            return cls.mongomock_as_mongodb(url, settings.mongodb_db, faults)
        if not url or url.startswith("mongomock://"):
            shared = _embedded(url or "mongomock://default")
            return cls(shared.client, settings.mongodb_db, embedded=True, lock=shared.lock, shared=shared, fast=True, faults=faults)
        log.info("connecting to MongoDB at %s", redact_url(url))
        try:
            client = pymongo.MongoClient(url, **mongo_client_options(settings))
        except (mongo_errors.PyMongoError, ValueError) as exc:
            raise StoreError(f"cannot open MongoDB at {redact_url(url)}: {exc}") from exc
        return cls(client, settings.mongodb_db, embedded=False, lock=None, faults=faults)

    @classmethod
    def mongomock_as_mongodb(cls, key: str, name: str, faults: FaultPlan | None = None) -> Store:
        """Plain mongomock behind the MongoDB code path (tests): mongomock's own unique indexes and
        pymongo's error classes, and a lock per call only (a server's single-operation atomicity)."""
        shared = _embedded(f"mongodb-as:{key}")
        return cls(shared.client, name, embedded=False, lock=shared.lock, shared=shared, fast=False, faults=faults)

    def with_faults(self, faults: FaultPlan | None) -> Store:
        """The same database seen by another process (its own fault plan)."""
        return Store(self.client, self.name, embedded=self.embedded, lock=self._lock, shared=self._shared,
                     fast=self._fast, faults=faults)

    def col(self, name: str) -> Collection:
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = Collection(self._raw_collection(name), self._lock, self.faults)
        return col

    def _raw_collection(self, name: str) -> Any:
        if not self._fast or self._shared is None:
            return self._raw_db[name]
        # One _FastCollection per (database, collection), shared by every Store of this client so
        # that the unique-key map it keeps sees every insert.
        with _EMBEDDED_LOCK:
            key = (self.name, name)
            raw = self._shared.collections.get(key)
            if raw is None:
                raw = self._shared.collections[key] = _FastCollection(
                    self._raw_db, name, _db_store=self._raw_db._store, codec_options=self._raw_db.codec_options)
            return raw

    @contextlib.contextmanager
    def op(self) -> Iterator[_Database]:
        """Yields the database (`db.messages` ...). Each call inside is atomic on its own; nothing
        is held across calls. Errors raised inside are translated like the calls' own."""
        try:
            yield self.db
        except mongo_errors.PyMongoError as exc:
            raise translate(exc, write=True) from exc

    # -- the database's clock ---------------------------------------------------------------
    def now(self) -> datetime:
        """The current time on the database's clock (millisecond precision, as BSON keeps).

        Leases are written and compared in this time, so connectors on hosts whose clocks differ
        agree on when a lease ends. MongoDB's clock is read with `hello` every minute (half the
        round trip corrected); the embedded store runs in this process, on its clock."""
        if not self.embedded and self._shared is None:
            mono = time.monotonic()
            if mono - self._clock_read >= CLOCK_REFRESH_SECONDS:
                self._read_clock()
        now = datetime.now(timezone.utc) + self._clock_offset
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    def _read_clock(self) -> None:
        started = time.monotonic()
        try:
            hello = self._raw_db.command("hello")
        except mongo_errors.PyMongoError as exc:  # keep the last offset; retry soon
            log.warning("cannot read the database's clock: %s", exc)
            self._clock_read = started - CLOCK_REFRESH_SECONDS + 5
            return
        rtt = time.monotonic() - started
        server = hello.get("localTime")
        if isinstance(server, datetime):
            if server.tzinfo is None:
                server = server.replace(tzinfo=timezone.utc)
            self._clock_offset = server + timedelta(seconds=rtt / 2) - datetime.now(timezone.utc)
        self._clock_read = started

    def drop(self) -> None:
        """Remove the whole database (tests and demo resets)."""
        try:
            self.client.drop_database(self.name)
        except mongo_errors.PyMongoError as exc:
            raise translate(exc, write=True) from exc
        if self._shared is not None:
            with _EMBEDDED_LOCK:
                for key in [k for k in self._shared.collections if k[0] == self.name]:
                    del self._shared.collections[key]


def _embedded(key: str) -> _Embedded:
    with _EMBEDDED_LOCK:
        shared = _EMBEDDED_CLIENTS.get(key)
        if shared is None:
            shared = _EMBEDDED_CLIENTS[key] = _Embedded(mongomock.MongoClient(tz_aware=True))
        return shared


def installed_mongomock_version() -> str:
    return str(getattr(mongomock, "__version__", "unknown"))
