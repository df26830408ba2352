"""The store and ledger contract, written once and run against every backend available: the
embedded store, mongomock behind the MongoDB code path, and a real MongoDB when MONGODB_TEST_URL
is set (see tests/conftest.py). What the ledger's correctness rests on is checked here: one call
is atomic, unique indexes refuse with DuplicateKey (inside a bulk write too), a write whose fate is
unknown says so, and the ledger's conditional transitions hold under concurrent callers."""
from __future__ import annotations

import re
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pymongo import errors as mongo_errors

from backend import transitions as tr
from backend.errors import DuplicateKey, OutcomeUnknown, StoreError
from backend.lanes import Tally
from backend.ledger import Ledger
from backend.settings import Settings
from backend.store import MONGOMOCK_VERSION, RETURN_AFTER, FaultPlan, ProcessCrash, Store, installed_mongomock_version, translate
from backend.values import ErrorInfo
from tests.conftest import ALL_FLAVORS

LEDGER_FLAVORS = ALL_FLAVORS
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(settings: Settings) -> Store:
    return Store.open(settings)


@pytest.fixture
def ledger(store: Store) -> Ledger:
    led = Ledger(store)
    led.register_actor("payment", queue_type="quorum", schema=None, subscriptions=[{"events": ["x"]}])
    led.register_actor("dossiers", queue_type="quorum", schema=None,
                       subscriptions=[{"events": ["x"], "ordering_key": "k"}], lanes=2)
    return led


def _stored(ledger: Ledger, n: int, actor: str = "payment", lane: int = 0) -> list[dict]:
    first = ledger.allocate(actor, n, lane)
    docs = [ledger.new_message(actor, first + i, "x", {"i": i}, None, lane) for i in range(n)]
    ledger.insert(docs)
    return docs


# -- the store ------------------------------------------------------------------------------------
def test_store_contract_embedded_shortcuts_are_pinned_to_the_mongomock_they_were_written_for() -> None:
    """The embedded store overrides two private methods of mongomock: the exact release is pinned
    in pyproject.toml and installed; moving the pin must come with a review of the overrides."""
    assert installed_mongomock_version() == MONGOMOCK_VERSION
    assert re.search(rf'"mongomock=={re.escape(MONGOMOCK_VERSION)}"', (ROOT / "pyproject.toml").read_text())


def test_store_contract_ordered_insert_stops_at_the_first_duplicate(store: Store) -> None:
    col = store.col("c")
    col.insert_many([{"_id": "a"}, {"_id": "c"}])
    with pytest.raises(DuplicateKey) as exc:
        col.insert_many([{"_id": "b"}, {"_id": "c"}, {"_id": "d"}], ordered=True)
    assert exc.value.failed == [1]
    assert sorted(d["_id"] for d in col.find({})) == ["a", "b", "c"]


def test_store_contract_unordered_insert_stores_all_but_the_duplicates(store: Store) -> None:
    col = store.col("c")
    col.insert_many([{"_id": "a"}])
    with pytest.raises(DuplicateKey) as exc:
        col.insert_many([{"_id": "a"}, {"_id": "b"}, {"_id": "a"}], ordered=False)
    assert exc.value.failed == [0, 2]
    assert sorted(d["_id"] for d in col.find({})) == ["a", "b"]


def test_store_contract_secondary_unique_index_refuses_and_a_delete_frees_the_key(store: Store) -> None:
    col = store.col("c")
    col.create_index([("actor", 1), ("event_id", 1)], unique=True, name="u")
    col.insert_one({"_id": "1", "actor": "a", "event_id": "e"})
    with pytest.raises(DuplicateKey):
        col.insert_one({"_id": "2", "actor": "a", "event_id": "e"})
    with pytest.raises(DuplicateKey):
        col.insert_many([{"_id": "3", "actor": "b", "event_id": "e"}, {"_id": "4", "actor": "a", "event_id": "e"}])
    col.insert_one({"_id": "5", "actor": "a", "event_id": "f"})  # another key is fine
    col.delete_one({"_id": "1"})
    col.insert_one({"_id": "6", "actor": "a", "event_id": "e"})  # the key was freed
    assert sorted(d["_id"] for d in col.find({})) == ["3", "5", "6"]


def test_store_contract_id_lookups_apply_the_rest_of_the_filter(store: Store) -> None:
    col = store.col("c")
    col.insert_many([{"_id": str(i), "v": i % 2} for i in range(6)])
    assert col.find_one({"_id": "3", "v": 1})["_id"] == "3"
    assert col.find_one({"_id": "3", "v": 0}) is None
    assert sorted(d["_id"] for d in col.find({"_id": {"$in": ["1", "2", "3", "9"]}, "v": 1})) == ["1", "3"]
    assert [d["_id"] for d in col.find({"v": 0}).sort("_id", -1).limit(2)] == ["4", "2"]


def test_store_contract_equality_on_an_indexed_field_finds_exactly_what_is_there(store: Store) -> None:
    """The embedded store answers these from a map of the field's values (kept as documents are
    written): the answers must be a server's, through inserts, deletes and changed values."""
    col = store.col("q")
    col.create_index([("corr", 1), ("at", 1)], name="corr_at")
    col.insert_many([{"_id": f"m{i}", "corr": f"c{i % 3}", "at": i} for i in range(9)])
    assert [d["_id"] for d in col.find({"corr": "c1"}).sort("at", 1)] == ["m1", "m4", "m7"]
    col.delete_one({"_id": "m4"})
    col.update_one({"_id": "m7"}, {"$set": {"corr": "c2"}})
    col.insert_one({"_id": "m9", "corr": "c1", "at": 9})
    assert [d["_id"] for d in col.find({"corr": "c1"}).sort("at", 1)] == ["m1", "m9"]
    assert [d["_id"] for d in col.find({"corr": "c2", "at": {"$gte": 5}}).sort("at", 1)] == ["m5", "m7", "m8"]
    assert col.count_documents({"corr": "nope"}) == 0


def test_store_contract_equality_on_an_array_field_matches_any_element_and_all_of_them(store: Store) -> None:
    """An array in an indexed field (the messages' search `terms`, multikey on MongoDB): `{f: w}`
    matches a document holding w among others, `{f: {$all: [...]}}` one holding every word. The
    embedded store answers from a map of the elements, kept through inserts, updates that change
    the list (by id or not, in place or not) and deletes: the answers must be a server's."""
    col = store.col("words")
    col.create_index([("actor", 1), ("terms", 1), ("at", -1)], name="actor_terms_at")
    col.insert_many([{"_id": f"m{i}", "actor": "a" if i < 6 else "b", "terms": [f"w{i % 3}", "common", f"id{i}"], "at": i}
                     for i in range(9)])
    col.insert_one({"_id": "s", "actor": "a", "terms": "common", "at": 20})  # a string matches as itself
    col.insert_one({"_id": "none", "actor": "a", "at": 21})  # stored before terms existed

    def ids(flt: dict, sort: int = -1) -> list[str]:
        return [d["_id"] for d in col.find(flt).sort([("at", sort)])]

    assert ids({"actor": "a", "terms": "w1"}) == ["m4", "m1"]
    assert ids({"actor": "a", "terms": {"$all": ["common", "w1"]}}, 1) == ["m1", "m4"]
    assert ids({"actor": "a", "terms": {"$all": ["w1", "w2"]}}) == []
    assert ids({"actor": "a", "terms": {"$all": ["common"]}}) == ["s", "m5", "m4", "m3", "m2", "m1", "m0"]
    assert ids({"terms": "w0", "at": {"$gte": 3}}) == ["m6", "m3"]
    assert col.count_documents({"actor": "a", "terms": {"$all": ["common"]}}) == 7
    assert col.count_documents({"actor": "a", "terms": {"$all": ["common"]}}, limit=3) == 3
    # a new list drops words and adds others: by id (the ledger's writes), by another filter, and returned
    col.update_one({"_id": "m1", "terms": {"$ne": None}}, {"$set": {"terms": ["w9", "common"]}})
    col.update_many({"actor": "b", "terms": "w0"}, {"$set": {"terms": ["w9"]}})
    col.find_one_and_update({"_id": "m4"}, {"$set": {"terms": ["w1", "fresh"]}})
    col.update_one({"_id": "none"}, {"$set": {"terms": ["fresh"]}})
    col.update_one({"_id": "m2"}, {"$push": {"terms": "late"}})
    assert ids({"actor": "a", "terms": "w1"}) == ["m4"]
    assert ids({"terms": "w9"}) == ["m6", "m1"]
    assert ids({"actor": "a", "terms": {"$all": ["fresh"]}}) == ["none", "m4"]
    assert ids({"actor": "a", "terms": {"$all": ["late", "w2"]}}) == ["m2"]
    assert ids({"actor": "b", "terms": "common"}) == ["m8", "m7"]
    col.delete_many({"_id": {"$in": ["m4", "m8"]}})
    assert ids({"terms": "fresh"}) == ["none"] and ids({"terms": "common", "actor": "b"}) == ["m7"]
    raw = store._raw_collection("words")
    if store.embedded:  # an equality on a word costs its documents, and no word points at one that lost it
        assert sorted(raw._candidates({"actor": "a", "terms": {"$all": ["common", "w9"]}})) == ["m1", "m6"]
        held = raw.__dict__["_fifoq_equal"]["terms"]
        stored = {d["_id"]: d.get("terms") for d in col.find({})}
        expected: dict[str, dict[str, None]] = {}
        for ident, terms in stored.items():
            for word in ([terms] if isinstance(terms, str) else terms or []):
                expected.setdefault(word, {})[ident] = None
        assert {w: set(i) for w, i in held.items()} == {w: set(i) for w, i in expected.items()}


def test_store_contract_one_call_is_atomic_under_concurrent_callers(store: Store) -> None:
    """Twenty threads race to take one document with a conditional find-and-modify: exactly one
    wins, as on a server (the embedded store's lock covers one call, never more)."""
    col = store.col("c")
    col.insert_one({"_id": "m", "owner": None})
    winners: list[int] = []
    start = threading.Barrier(20)

    def take(i: int) -> None:
        start.wait()
        if col.find_one_and_update({"_id": "m", "owner": None}, {"$set": {"owner": i}}) is not None:
            winners.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and col.find_one({"_id": "m"})["owner"] == winners[0]


def test_store_contract_bulk_update_counts_what_it_modified(store: Store) -> None:
    from backend.store import Update

    col = store.col("c")
    col.insert_many([{"_id": "a", "v": 0}, {"_id": "b", "v": 0}])
    assert col.bulk_update([Update({"_id": "a", "v": 0}, {"$set": {"v": 1}}), Update({"_id": "b", "v": 9}, {"$set": {"v": 1}})]) == 1
    assert [d["v"] for d in col.find({}).sort("_id", 1)] == [1, 0]


def test_store_contract_updates_by_id_give_what_mongodb_gives(store: Store) -> None:
    """The operators the ledger sends, on one document: the embedded store applies them in place
    (its fast path), mongomock behind the MongoDB code path applies them its own way; both must
    end with this document and these counts."""
    from datetime import datetime, timedelta, timezone

    col = store.col("u")
    t0 = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    col.insert_one({"_id": "m", "status": "queued", "attempts": 0, "log": [], "custody": [{"s": 1, "k": "A"}, {"s": 2, "k": "B"}]})
    r = col.update_one({"_id": "m", "status": "queued", "attempts": 0},
                       {"$set": {"status": "processing", "owner": "w", "at": t0}, "$inc": {"attempts": 1, "counts.done": 2}})
    assert (r.matched_count, r.modified_count) == (1, 1)
    assert col.update_one({"_id": "m", "status": "queued"}, {"$set": {"status": "x"}}).matched_count == 0
    assert col.update_one({"_id": "nope"}, {"$set": {"status": "x"}}).matched_count == 0
    assert col.update_one({"_id": "m", "at": {"$lt": t0 + timedelta(seconds=1)}}, {"$min": {"since": t0}}).modified_count == 1
    assert col.update_one({"_id": "m"}, {"$min": {"since": t0 + timedelta(hours=1)}}).modified_count == 0
    for i in range(5):
        col.update_one({"_id": "m"}, {"$push": {"log": {"$each": [{"i": i}], "$slice": -3}}})
    after = col.find_one_and_update({"_id": "m"}, {"$pull": {"custody": {"s": 1}}, "$unset": {"owner": ""},
                                                   "$inc": {"activity.2026-01-01T12:00.created": 1}},
                                    return_document=RETURN_AFTER)
    assert after == {"_id": "m", "status": "processing", "attempts": 1, "log": [{"i": 2}, {"i": 3}, {"i": 4}],
                     "custody": [{"s": 2, "k": "B"}], "at": t0, "counts": {"done": 2}, "since": t0,
                     "activity": {"2026-01-01T12:00": {"created": 1}}}
    before = col.find_one_and_update({"_id": "m"}, {"$set": {"status": "done"}}, projection={"status": 1})
    assert before == {"_id": "m", "status": "processing"}
    assert col.find_one_and_update({"_id": "m", "status": "queued"}, {"$set": {"status": "x"}}) is None
    assert col.update_one({"_id": "m"}, {"$pull": {"custody": {"s": 9}}}).modified_count == 0
    assert col.find_one({"_id": "m"})["at"] == t0  # a datetime comes back aware, in UTC
    col.insert_one({"_id": "p", "items": [{"state": "waiting"}, {"state": "waiting"}]})
    assert col.update_one({"_id": "p"}, {"$set": {"items.1.state": "done"}}).modified_count == 1  # into an array
    assert col.find_one({"_id": "p"})["items"] == [{"state": "waiting"}, {"state": "done"}]


def test_store_contract_an_update_of_listed_ids_updates_each_match_once(store: Store) -> None:
    """`update_many` on `{"_id": {"$in": ids}, ...}` (the publish confirms): the embedded store
    updates each listed document by id instead of scanning; every backend must match each
    document once (a repeated id too), leave the rest alone and count the same."""
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    t1 = datetime(2026, 1, 1, 12, 5, tzinfo=timezone.utc)
    col = store.col("many")
    col.insert_one({"_id": "m0", "status": "pending", "published_at": None})
    col.insert_one({"_id": "m1", "status": "queued"})
    col.insert_one({"_id": "m2", "status": "pending", "published_at": t0, "items": [{"s": "w"}, {"s": "w"}]})
    col.insert_one({"_id": "m3", "status": "pending", "published_at": None})
    r = col.update_many({"_id": {"$in": ["m0", "m1", "m2", "m0", "absent"]}, "published_at": None},
                        {"$set": {"published_at": t1}})
    assert (r.matched_count, r.modified_count) == (2, 2)
    r = col.update_many({"_id": {"$in": ["m0", "m1", "m2"]}, "status": {"$in": ["pending"]}},
                        {"$set": {"status": "queued", "items.1.s": "d"}})  # into an array for m2
    assert (r.matched_count, r.modified_count) == (2, 2)
    assert col.update_many({"_id": {"$in": ["m1"]}}, {"$set": {"status": "queued"}}).modified_count == 0
    assert col.update_many({"_id": {"$in": []}}, {"$set": {"status": "x"}}).matched_count == 0
    docs = {d["_id"]: d for d in col.find({})}
    assert docs["m0"]["published_at"] == t1 and docs["m0"]["status"] == "queued" and docs["m0"]["items"] == {"1": {"s": "d"}}
    assert docs["m1"] == {"_id": "m1", "status": "queued", "published_at": t1}
    assert docs["m2"]["published_at"] == t0 and docs["m2"]["items"] == [{"s": "w"}, {"s": "d"}]
    assert docs["m3"] == {"_id": "m3", "status": "pending", "published_at": None}


def test_store_contract_conditional_updates_match_as_mongodb_matches(store: Store) -> None:
    """The filters of conditional writes (the fenced attempts' equalities, the claim's `$or`),
    and the shapes around them that BSON compares in its own ways (null and a missing field, an
    int and a bool or a float, an array, `$ne: null`), on every backend: the embedded store
    matches the plain ones itself and must say what mongomock and MongoDB say."""
    from datetime import timedelta

    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    docs = [
        {"_id": "a", "status": "processing", "owner": "w", "attempts": 1, "lease_until": now - timedelta(seconds=1)},
        {"_id": "b", "status": "queued", "attempts": 0, "version": 1},
        {"_id": "c", "status": "failed", "attempts": 2, "replay_requested": None, "flag": True},
        {"_id": "d", "status": "failed", "attempts": 2.0, "replay_requested": now, "tags": ["x", "y"]},
        {"_id": "e", "status": "processing", "owner": None, "attempts": 1, "lease_until": None},
    ]
    filters = [
        {"status": "processing", "owner": "w", "attempts": 1},
        {"status": "processing", "owner": "w", "attempts": 2},
        {"attempts": 2},  # an int against a stored float
        {"flag": 1},  # an int against a bool
        {"owner": None},  # null matches null and a missing field
        {"replay_requested": {"$ne": None}},
        {"tags": "x"},  # an array matches by its elements
        {"status": {"$in": ["queued", "failed"]}, "version": 1},
        tr.claim_filter({"_id": "?", "attempts": 0, "version": 1, "status": "queued"}, "w", now),
        {"$or": [{"status": "failed", "replay_requested": {"$ne": None}}, {"status": "processing", "lease_until": {"$lt": now}}]},
        {"$or": [{"status": "processing", "lease_until": None}, {"status": "queued"}]},
    ]
    col = store.col("match")
    for doc in docs:
        col.insert_one(dict(doc))
    got = {}
    for i, flt in enumerate(filters):
        flt = {k: v for k, v in flt.items() if k != "_id"}
        for doc in docs:
            # A conditional update by id that changes nothing the filter looks at: modified or not.
            got[(i, doc["_id"])] = col.update_one(dict(flt, _id=doc["_id"]), {"$inc": {"hits": 1}}).modified_count
    expected = {}
    for i, flt in enumerate(filters):
        flt = {k: v for k, v in flt.items() if k != "_id"}
        for doc in docs:
            expected[(i, doc["_id"])] = int(col.count_documents(dict(flt, _id=doc["_id"])) == 1)
    assert got == expected
    assert got[(0, "a")] == 1 and got[(2, "d")] == 1 and got[(4, "b")] == 1 and got[(4, "a")] == 0
    assert got[(5, "d")] == 1 and got[(5, "c")] == 0 and got[(6, "d")] == 1 and got[(8, "b")] == 1 and got[(9, "a")] == 1


# -- errors: what MongoDB raises is mapped on purpose --------------------------------------------
@pytest.mark.parametrize(
    ("error", "write", "expected"),
    [
        (mongo_errors.DuplicateKeyError("E11000", 11000), True, DuplicateKey),
        (mongo_errors.BulkWriteError({"writeErrors": [{"index": 2, "code": 11000, "errmsg": "dup"}], "nInserted": 2}), True, DuplicateKey),
        (mongo_errors.BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "replication timed out"}]}),
         True, OutcomeUnknown),
        (mongo_errors.BulkWriteError({"writeErrors": [{"index": 0, "code": 121, "errmsg": "validation"}]}), True, StoreError),
        (mongo_errors.AutoReconnect("connection closed"), True, OutcomeUnknown),
        (mongo_errors.NotPrimaryError("not primary"), True, OutcomeUnknown),
        (mongo_errors.NetworkTimeout("timed out"), True, OutcomeUnknown),
        (mongo_errors.WTimeoutError("waiting for replication timed out", 64), True, OutcomeUnknown),
        (mongo_errors.ExecutionTimeout("operation exceeded time limit", 50), True, OutcomeUnknown),
        (mongo_errors.ServerSelectionTimeoutError("no primary"), True, StoreError),
        (mongo_errors.AutoReconnect("connection closed"), False, StoreError),
        (mongo_errors.OperationFailure("bad query", 2), False, StoreError),
    ],
)
def test_store_contract_driver_errors_map_to_the_projects_errors(error: Exception, write: bool, expected: type) -> None:
    got = translate(error, write=write)
    assert type(got) is expected
    if isinstance(got, DuplicateKey) and isinstance(error, mongo_errors.BulkWriteError):
        assert got.failed == [2]


def test_store_contract_fault_plan_fails_applies_or_crashes_the_numbered_write(store: Store) -> None:
    for mode, applied, raised in (("fail", False, StoreError), ("unknown", True, OutcomeUnknown), ("crash", True, ProcessCrash)):
        plan = FaultPlan(at=2, mode=mode)
        col = store.with_faults(plan).col(f"f_{mode}")
        col.insert_one({"_id": "1"})
        with pytest.raises(raised):
            col.insert_one({"_id": "2"})
        assert (store.col(f"f_{mode}").find_one({"_id": "2"}) is not None) is applied, mode
        if mode == "crash":
            with pytest.raises(ProcessCrash):
                col.find_one({"_id": "1"})  # a dead process does nothing more


# -- the ledger's transitions -----------------------------------------------------------------------
def test_ledger_contract_the_same_number_or_event_is_never_stored_twice(ledger: Ledger) -> None:
    [doc] = _stored(ledger, 1)
    with pytest.raises(DuplicateKey):
        ledger.insert([ledger.new_message("payment", doc["seq"], "x", {}, None)])  # same number
    again = ledger.new_message("payment", ledger.allocate("payment"), "x", {}, None, event_id=doc["event_id"])
    with pytest.raises(DuplicateKey):
        ledger.insert([again])  # same event for the same subscriber
    assert ledger.stored_events([("payment", doc["event_id"])])[("payment", doc["event_id"])]["_id"] == doc["_id"]


def test_ledger_contract_one_claim_wins_and_its_attempt_number_fences_the_others(ledger: Ledger) -> None:
    [doc] = _stored(ledger, 1)
    results: list[dict | None] = []
    start = threading.Barrier(8)

    def claim(owner: str) -> None:
        start.wait()
        results.append(ledger.claim(doc, owner, 30))

    threads = [threading.Thread(target=claim, args=(f"o{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if r is not None]
    assert len(won) == 1
    winner = won[0]
    assert not ledger.settle(dict(winner, attempts=winner["attempts"] - 1), winner["owner"])  # stale fence
    assert not ledger.settle(winner, "someone-else")
    assert ledger.settle(winner, winner["owner"]) and ledger.message(doc["_id"])["status"] == "done"
    assert ledger.settle(winner, winner["owner"])  # retried after it landed: known, not run again


def test_ledger_contract_a_settle_whose_answer_is_lost_is_resolved_by_reading_back(store: Store, ledger: Ledger) -> None:
    [doc] = _stored(ledger, 1)
    held = ledger.claim(doc, "w", 30)
    plan = FaultPlan(at=1, mode="unknown")  # the settle is applied, its answer lost
    assert Ledger(store.with_faults(plan)).settle(held, "w", ErrorInfo("E", "boom"))
    after = ledger.message(doc["_id"])
    assert after["status"] == "failed" and len([a for a in after["attempt_log"] if a["outcome"] == "failed"]) == 1


def test_ledger_contract_the_watermark_counts_each_message_once_under_concurrent_folds(ledger: Ledger) -> None:
    docs = _stored(ledger, 10)
    for d in docs:
        held = ledger.claim(d, "w", 30)
        ledger.settle(held, "w")
    settled = ledger.by_ids([d["_id"] for d in docs])
    lane = ledger.lane("payment")
    start = threading.Barrier(6)

    def fold() -> None:
        start.wait()
        ledger.fold(lane, 10, settled)

    threads = [threading.Thread(target=fold) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = ledger.lane("payment")
    assert after["w"] == 10 and after["counts"]["done"] == 10
    assert ledger.status_counts("payment")["payment"] == {"done": 10}


def test_ledger_contract_custody_takes_a_key_once_and_releases_it_once(ledger: Ledger) -> None:
    [a1, a2] = _stored(ledger, 2, "dossiers", 1)
    lane = ledger.lane("dossiers", 1)
    after = ledger.fold(lane, 1, [], custody={"s": 1, "k": "A"})
    assert after is not None and after["custody"] == [{"s": 1, "k": "A"}]
    # a key that has no entry any more takes none (released meanwhile)
    assert ledger.fold(after, 2, [], custody={"s": 2, "k": "B"}, key_blocked="B") is None
    assert ledger.fold(after, 2, [], custody={"s": 2, "k": "A"}, key_blocked="A") is not None
    cancelled = ledger.cancel(a1["_id"], "op", "wrong")
    assert ledger.release_custody(lane["_id"], cancelled) is not None
    assert ledger.release_custody(lane["_id"], cancelled) is None  # once
    assert ledger.lane("dossiers", 1)["counts"]["cancelled"] == 1
    assert [b["message_id"] for b in ledger.blocks("dossiers")] == [a2["_id"]]


def test_ledger_contract_operator_intents_are_single_writes_that_converge(ledger: Ledger) -> None:
    [doc] = _stored(ledger, 1)
    held = ledger.claim(doc, "w", 30)
    ledger.settle(held, "w", ErrorInfo("E", "boom"))
    assert ledger.request_replay(doc["_id"], "op") is not None
    assert ledger.request_replay(doc["_id"], "op") is None  # asked once
    assert ledger.cancel(doc["_id"], "op", "no") is not None
    assert ledger.cancel(doc["_id"], "op", "no") is None
    assert tr.is_final(ledger.message(doc["_id"])["status"])


def test_ledger_contract_gaps_close_once_and_a_late_message_is_refused(ledger: Ledger) -> None:
    first = ledger.allocate("payment", 3)
    assert ledger.close_gaps("payment", 0, [first, first + 1], "test") == [first, first + 1]
    assert ledger.close_gaps("payment", 0, [first, first + 1], "test") == []
    with pytest.raises(DuplicateKey):
        ledger.insert([ledger.new_message("payment", first + 1, "x", {}, None)])
    assert ledger.lanes.get("payment", 0)["next"] == first + 3  # nothing above the allocator


def test_ledger_contract_counts_and_activity_come_from_the_fold_not_a_scan(ledger: Ledger) -> None:
    docs = _stored(ledger, 3)
    for d in docs:
        ledger.settle(ledger.claim(d, "w", 30), "w")
    tally = Tally()
    tally.add("done", 3)
    ledger.lanes.advance(ledger.lane("payment"), 3, tally)
    assert ledger.status_counts("payment")["payment"] == {"done": 3}
    assert sum(ledger.lane("payment")["activity"][m].get("created", 0) for m in ledger.lane("payment")["activity"]) == 3


def test_store_contract_a_document_read_is_a_copy_whatever_the_caller_does_with_it(store: Store) -> None:
    col = store.col("copies")
    col.insert_one({"_id": "a", "nested": {"list": [1, {"deep": "x"}]}, "at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    for read in (col.find_one({"_id": "a"}), next(iter(col.find({}))), next(iter(col.find({}, {"at": 0})))):
        assert read is not None
        read["nested"]["list"][1]["deep"] = "changed"
        read["nested"]["list"].append(2)
        read["nested"]["new"] = True
    stored = col.find_one({"_id": "a"})
    assert stored is not None
    assert stored["nested"] == {"list": [1, {"deep": "x"}]}
    assert stored["at"] == datetime(2026, 1, 1, tzinfo=timezone.utc) and stored["at"].tzinfo is not None
    assert "at" not in col.find_one({"_id": "a"}, {"at": 0})


def test_store_contract_an_insert_stores_a_copy_as_bson_would_and_refuses_what_bson_cannot_hold(store: Store) -> None:
    """The embedded store makes its stored copy of an inserted document its own way: the values
    come back as from MongoDB (datetimes in UTC at millisecond precision, tuples as lists), the
    caller's document changed afterwards changes nothing stored, and a document BSON cannot hold
    is refused with nothing stored, on every backend."""
    from datetime import timedelta

    col = store.col("inserts")
    paris = timezone(timedelta(hours=1))
    doc = {"_id": "a", "at": datetime(2026, 1, 1, 13, 0, 0, 123456, tzinfo=paris), "pair": (1, "x"),
           "log": [{"t": datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc), "n": None}], "f": 1.5, "b": True}
    col.insert_many([doc])
    doc["log"][0]["n"] = "changed"
    doc["log"].append("more")
    stored = col.find_one({"_id": "a"})
    assert stored == {"_id": "a", "at": datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=timezone.utc), "pair": [1, "x"],
                      "log": [{"t": datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc), "n": None}], "f": 1.5, "b": True}
    for bad in ({"_id": "b", "s": {1, 2}}, {"_id": "c", "$bad": 1}, {"_id": "d", 5: "x"}):
        with pytest.raises(Exception):  # noqa: B017 - each backend raises its own type; nothing may be stored
            col.insert_one(bad)
    assert [d["_id"] for d in col.find({})] == ["a"]
    with pytest.raises(DuplicateKey):
        col.insert_one({"_id": "a"})


def test_store_contract_deleted_documents_leave_nothing_behind(store: Store) -> None:
    """Retention deletes settled messages for ever: what a store keeps for its lookups (on the
    embedded store, its maps of unique keys and of indexed values) must shrink with them, refused
    inserts must leave nothing, and the answers stay a server's."""
    col = store.col("gone")
    col.create_index([("actor", 1), ("event_id", 1)], unique=True, name="u")
    col.create_index([("corr", 1)], name="corr")
    col.create_index([("actor", 1), ("terms", 1)], name="actor_terms")
    col.insert_many([{"_id": f"m{i}", "actor": "a", "event_id": f"e{i}", "corr": f"c{i}", "terms": [f"t{i}", "all"]}
                     for i in range(300)])
    assert [d["_id"] for d in col.find({"corr": "c7"})] == ["m7"]  # the maps exist from here on
    assert [d["_id"] for d in col.find({"actor": "a", "terms": {"$all": ["t7", "all"]}})] == ["m7"]
    with pytest.raises(DuplicateKey):
        col.insert_one({"_id": "dup", "actor": "a", "event_id": "e1", "corr": "c-dup", "terms": ["t-dup"]})
    col.update_many({"corr": {"$in": ["c5", "c6"]}}, {"$set": {"terms": ["changed"]}})  # the old words go
    col.delete_many({"_id": {"$in": [f"m{i}" for i in range(0, 300, 2)]}})  # by ids, as retention does
    col.delete_many({"corr": {"$in": [f"c{i}" for i in range(3, 300, 2)]}})  # by another filter
    col.delete_one({"actor": "a", "event_id": "e1"})
    assert col.count_documents({}) == 0 and list(col.find({"corr": "c-dup"})) == [] and list(col.find({"terms": "t-dup"})) == []
    col.insert_one({"_id": "m1", "actor": "a", "event_id": "e1", "corr": "c1", "terms": ["t1"]})  # every key is free again
    assert [d["_id"] for d in col.find({"corr": "c1"})] == ["m1"] and list(col.find({"corr": "c3"})) == []
    assert [d["_id"] for d in col.find({"terms": "t1"})] == ["m1"] and list(col.find({"terms": "all"})) == []
    raw = store._raw_collection("gone")
    if "_fifoq_equal" in raw.__dict__:  # the embedded store: only the one document left is known
        assert raw.__dict__["_fifoq_equal"] == {"actor": {"a": {"m1": None}}, "corr": {"c1": {"m1": None}},
                                                "terms": {"t1": {"m1": None}}}
        assert raw.__dict__["_fifoq_lists"] == {"terms": {"m1": ("t1",)}}
        assert raw.__dict__["_fifoq_unique"] == {"u": {("a", "e1"): "m1"}}


def test_store_contract_cursor_skip_and_limit_return_exactly_their_window(store: Store) -> None:
    col = store.col("window")
    col.insert_many([{"_id": f"{i:03d}", "v": i} for i in range(50)])
    assert [d["v"] for d in col.find({}).sort("v", 1).skip(10).limit(3)] == [10, 11, 12]
    assert [d["v"] for d in col.find({}).sort("v", -1).skip(48).limit(5)] == [1, 0]
    assert [d["v"] for d in col.find({}).sort("v", 1).skip(60)] == []
    assert [d["v"] for d in col.find({"v": {"$gte": 45}}).sort("v", 1).limit(0)] == [45, 46, 47, 48, 49]
    docs = iter(col.find({}).sort("v", 1).skip(5).limit(2))
    assert next(docs)["v"] == 5 and next(docs)["v"] == 6
    with pytest.raises(StopIteration):
        next(docs)


def test_store_contract_a_projection_comes_back_unchanged(store: Store) -> None:
    """mongomock adds `_id` to the projection it is given: a module's constant projection (the
    ledger's hidden search fields) must not change under its users."""
    col = store.col("projections")
    col.insert_one({"_id": "a", "x": 1, "t": 2})
    hidden = {"t": 0}
    assert col.find_one({"_id": "a"}, hidden) == {"_id": "a", "x": 1}
    assert list(col.find({}, hidden)) == [{"_id": "a", "x": 1}]
    assert col.find_one_and_update({"_id": "a"}, {"$set": {"x": 2}}, projection=hidden, return_document=RETURN_AFTER) == {"_id": "a", "x": 2}
    assert hidden == {"t": 0}


def test_operation_meter_adds_the_latency_asked_taking_off_what_a_sleep_overshoots() -> None:
    """`python -m bench ledger --ledger-latency MS` adds MS to every ledger call: the meter
    measures how much longer than asked a sleep lasts and sleeps that much less, so that the
    latency added is the one asked for; it reports what it added. A fake clock whose sleeps
    overshoot by 0.3 ms stands for the machine (no timing in tests)."""
    from backend import store as store_module

    clock = [0.0]
    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        clock[0] += seconds + 0.0003

    meter = store_module.OperationMeter()
    meter.sleep, meter.clock = sleep, lambda: clock[0]
    meter.start(0.002)
    for _ in range(10):
        meter.record("messages", "update_one", True)
    calls = meter.stop()
    assert len(calls) == 10
    assert asked[-10:] == [pytest.approx(0.0017)] * 10
    assert meter.added(len(calls)) == pytest.approx(0.002)
    calibrations = len(asked) - 10
    meter.start(0.002)  # measured once per latency
    meter.stop()
    assert len(asked) == calibrations + 10
