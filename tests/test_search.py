"""The payload search: whole words of the payload's values and of the correlation id, every word
required, answered by the index `actor_terms_created` from the `terms` stored with each message;
`python -m backend reindex-search` gives them to messages stored before. Run on every ledger
backend (see tests/conftest.py)."""
from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from backend import cli as backend_cli
from backend import ledger_search
from backend.app import Backend
from backend.errors import StoreError
from backend.ledger import Ledger, utcnow
from backend.search_terms import MAX_TERM_CHARS, MAX_TERMS, message_terms, words
from backend.store import FaultPlan, ProcessCrash
from tests.conftest import ALL_FLAVORS

LEDGER_FLAVORS = ALL_FLAVORS
ACTOR = "searched"


@pytest.fixture(autouse=True)
def _actor(backend: Backend) -> None:
    backend.subscriptions.subscribe(ACTOR, "search.test")
    backend.declare()


def _stored(ledger: Ledger, payloads: list[Any], *, old: bool = False, status: str = "done") -> list[str]:
    """Messages of the actor with these payloads, oldest first (`old`: stored before search
    terms existed); their ids."""
    first = ledger.allocate(ACTOR, len(payloads))
    now = utcnow()
    docs = []
    for seq, payload in enumerate(payloads, start=first):
        doc = ledger.new_message(ACTOR, seq, "search.test", payload, f"order-{seq}")
        doc.update(status=status, attempts=1, published_at=now, started_at=now, finished_at=now, settled_at=now)
        if old:
            del doc["terms"], doc["terms_version"]
        docs.append(doc)
    ledger.insert(docs)
    return [d["_id"] for d in docs]


def _found(ledger: Ledger, text: str, **kw: Any) -> list[str]:
    return [d["_id"] for d in ledger.find(actor=ACTOR, text=text, sort="newest", **kw)[0]]


# -- the tokenizer ------------------------------------------------------------------------------------
def test_search_terms_are_the_casefolded_words_of_values_and_correlation_id_not_keys() -> None:
    payload = {"Customer": {"Email": "Ada.Lovelace@Example.COM", "vip": True, "note": None},
               "amounts": [12.5, -3], "tags": ["Straße", "x_y"], "empty": ""}
    assert message_terms(payload, "Order-42") == [
        "order", "42", "ada", "lovelace", "example", "com", "true", "12", "5", "3", "strasse", "x_y"]
    assert words("  ADA@example.com, ada!! ") == ["ada", "example", "com"]  # deduplicated, in order
    assert words("...!?") == [] and words("") == []


def test_search_terms_are_capped_per_word_and_per_message() -> None:
    long_word = "x" * (MAX_TERM_CHARS + 10)
    assert message_terms({"a": long_word}, None) == ["x" * MAX_TERM_CHARS]
    assert words(long_word) == ["x" * MAX_TERM_CHARS]  # the query cuts it the same way: it still finds itself
    many = message_terms({"n": list(range(MAX_TERMS * 2))}, "cid")
    assert len(many) == MAX_TERMS and many[0] == "cid" and many[-1] == str(MAX_TERMS - 2)


# -- the query ----------------------------------------------------------------------------------------
def test_search_finds_by_a_word_and_by_several_words_newest_first(backend: Backend) -> None:
    ledger = backend.ledger
    ada, bob, ada2 = _stored(ledger, [{"customer": {"email": "ada@example.com"}, "amount": 10},
                                      {"customer": {"email": "bob@example.com"}, "amount": 10},
                                      {"customer": {"email": "ada@example.org"}, "amount": 7}])
    assert _found(ledger, "ADA") == [ada2, ada]
    assert _found(ledger, "ada@example.com") == [ada]  # every word: ada, example and com
    assert _found(ledger, "example 10") == [bob, ada]
    assert [d["_id"] for d in ledger.find(actor=ACTOR, text="ada", sort="oldest")[0]] == [ada, ada2]
    assert _found(ledger, f"order-{ledger.message(bob)['seq']}") == [bob]  # the correlation id's words
    assert _found(ledger, bob) == [bob] and _found(ledger, bob, status="failed") == []  # a message's exact id, filtered
    assert _found(ledger, "ada", status="failed") == [] and _found(ledger, "ada", event="other") == []
    assert _found(ledger, "ada", until=utcnow().replace(year=2000)) == []


def test_search_does_not_match_part_of_a_word_or_a_key(backend: Backend) -> None:
    ledger = backend.ledger
    _stored(ledger, [{"customer": {"email": "ada@example.com"}, "booking_ref": "BK-123456"}])
    assert _found(ledger, "exam") == [] and _found(ledger, "xample") == [] and _found(ledger, "12345") == []
    assert _found(ledger, "customer") == [] and _found(ledger, "email") == [] and _found(ledger, "booking_ref") == []
    assert _found(ledger, "ada unknownword") == []  # every word must be there


def test_search_finds_an_edited_payload_by_its_new_words_and_not_its_old_ones(backend: Backend) -> None:
    ledger = backend.ledger
    [mid] = _stored(ledger, [{"note": "zebra crossing"}], status="failed")
    backend.operations.edit(mid, {"note": "giraffe"}, by="otto")
    assert _found(ledger, "giraffe") == [mid]
    assert _found(ledger, "zebra") == [] and _found(ledger, "crossing") == []
    doc = ledger.message(mid)
    assert "terms" not in doc and "terms_version" not in doc  # the search's own fields are not handed out


def test_search_pages_and_counts_up_to_its_cap_then_says_more_than_shown(backend: Backend,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = backend.ledger
    ids = _stored(ledger, [{"k": f"common w{i}"} for i in range(12)])
    page, total = ledger.find(actor=ACTOR, text="common", sort="newest", skip=4, limit=4)
    assert [d["_id"] for d in page] == list(reversed(ids))[4:8] and total == 12
    page, total = ledger.find(actor=ACTOR, text="common", sort="oldest", skip=8, limit=10)
    assert [d["_id"] for d in page] == ids[8:] and total == 12  # the last page: counted from itself
    monkeypatch.setattr(ledger_search, "COUNT_CAP", 10)
    page, total = ledger.find(actor=ACTOR, text="common", sort="newest", limit=5)
    assert len(page) == 5 and total is None  # more than 10: "more than shown"
    assert ledger.find(actor=ACTOR, text="w3 common", limit=5)[1] == 1


def test_search_the_trace_path_uses_the_same_words(backend: Backend) -> None:
    ledger = backend.ledger
    [mid] = _stored(ledger, [{"note": "zebra"}])
    cid = ledger.message(mid)["correlation_id"]
    assert [d["_id"] for d in ledger.find(correlation_id=cid, text="ZEBRA")[0]] == [mid]
    assert ledger.find(correlation_id=cid, text="zeb")[0] == []


# -- messages stored before search terms ---------------------------------------------------------------
def test_search_reindex_fills_old_messages_and_never_overwrites_an_edit(backend: Backend,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = backend.ledger
    old = _stored(ledger, [{"note": f"walrus {i}"} for i in range(7)], old=True, status="failed")
    new = _stored(ledger, [{"note": "walrus new"}])
    assert _found(ledger, "walrus") == new  # not found until reindexed
    backend.operations.edit(old[0], {"note": "edited before"}, by="otto")  # its terms come with the edit
    # an edit that lands between the backfill's read and its write: the write is refused
    real = ledger_search.search_fields
    raced: list[str] = []

    def racing(payload: Any, correlation_id: str | None, version: int) -> dict[str, Any]:
        if not raced:  # the first message the backfill gives terms to is edited meanwhile
            raced.append(f"{ACTOR}.0.{str(correlation_id).rsplit('-', 1)[1]}")
            backend.operations.edit(raced[0], {"note": "edited meanwhile"}, by="otto")
        return real(payload, correlation_id, version)

    monkeypatch.setattr(ledger_search, "search_fields", racing)
    assert ledger.reindex_search(ACTOR, batch=3) == {"read": 8, "written": 5}
    monkeypatch.setattr(ledger_search, "search_fields", real)
    assert raced and raced[0] in old[1:]
    assert _found(ledger, "walrus") == new + [m for m in reversed(old[1:]) if m != raced[0]]
    assert _found(ledger, "edited before") == [old[0]] and _found(ledger, "meanwhile") == raced
    assert ledger.reindex_search(ACTOR) == {"read": 8, "written": 0}  # again: nothing left to do


@pytest.mark.parametrize("mode", FaultPlan.MODES)
def test_search_reindex_interrupted_at_any_write_finishes_when_run_again(backend: Backend, mode: str) -> None:
    """Each write of the backfill fails before it is applied, is applied but answered with an
    error, or is the last thing a dying process does: run again, the backfill gives every old
    message its words, once, and leaves every payload as it was."""
    ledger = backend.ledger
    payloads = [{"note": f"walrus {i}"} for i in range(5)]
    old = _stored(ledger, payloads, old=True)
    for at in range(1, len(old) + 1):
        for mid in old:  # back to "stored before search terms existed"
            ledger.messages.update_one({"_id": mid}, {"$unset": {"terms": "", "terms_version": ""}})
        plan = FaultPlan(at=at, mode=mode)
        with pytest.raises((StoreError, ProcessCrash)):
            Ledger(ledger.store.with_faults(plan)).reindex_search(ACTOR, batch=2)
        assert plan.hit, at
        done = ledger.reindex_search(ACTOR, batch=2)
        assert done["read"] == len(old) and done["written"] == len(old) - (at - 1) - (mode != "fail"), (at, done)
        assert _found(ledger, "walrus") == list(reversed(old)), at
        assert [ledger.message(m)["payload"] for m in old] == payloads


def test_search_reindex_command_reports_per_actor_and_refuses_bad_arguments(backend: Backend, run_cli: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _stored(backend.ledger, [{"note": "old one"}, {"note": "old two"}], old=True)
    for name, value in (("MONGODB_URL", backend.settings.mongodb_url), ("MONGODB_DB", backend.settings.mongodb_db),
                        ("FIFOQ_PREFIX", backend.settings.prefix)):
        monkeypatch.setenv(name, value)
    res = run_cli(backend_cli.main, ["reindex-search", "--actor", ACTOR, "--batch", "1"])
    assert res.code == 0 and res.stdout == f"{ACTOR}: search terms written for 2 of 2 message(s)\n", res
    assert _found(backend.ledger, "old") != []
    for args, needle in ((["--actor", "nobody"], "unknown actor 'nobody'"), (["--batch", "0"], "--batch"),
                         (["--batch", "x"], "--batch")):
        res = run_cli(backend_cli.main, ["reindex-search", *args])
        assert res.code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and needle in res.stderr, res


# -- the console and its API ---------------------------------------------------------------------------
def test_search_bad_text_is_a_400_or_an_empty_answer_never_a_500(admin_client: FlaskClient, backend: Backend) -> None:
    _stored(backend.ledger, [{"note": "zebra"}])
    api = f"/api/actors/{ACTOR}/messages"
    resp = admin_client.get(api, query_string={"q": "zebra " * 100})
    assert resp.status_code == 400 and "q is longer than" in resp.get_json()["error"]
    for q in ("...", "!?#", "—", "$all", '{"$gt": ""}', "\x00"):
        resp = admin_client.get(api, query_string={"q": q})
        assert resp.status_code == 200 and resp.get_json()["items"] == [] and resp.get_json()["total"] == 0, q
    page = admin_client.get(f"/actors/{ACTOR}", query_string={"q": "!?"})
    assert page.status_code == 200 and "has no word" in page.get_data(as_text=True)
    page = admin_client.get(f"/actors/{ACTOR}", query_string={"q": "x" * 500}, follow_redirects=True)
    assert page.status_code == 200 and "q is longer than" in page.get_data(as_text=True)


def test_search_console_says_what_the_search_matches(admin_client: FlaskClient, backend: Backend) -> None:
    [mid] = _stored(backend.ledger, [{"note": "zebra"}])
    html = " ".join(admin_client.get(f"/actors/{ACTOR}", query_string={"q": "Zebra"}).get_data(as_text=True).split())
    assert f'href="/messages/{mid}"' in html
    assert "whole words, any case, of the payload's values and the correlation id" in html
    assert "a message matches when it has every word" in html and "reindex-search" in html
