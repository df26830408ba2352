"""An actor's message list walks its lanes by id: a page costs the messages walked, and a filter
that matches little stops at a fixed number of messages and says "more than shown", whatever
the actor's history. (A payload search is an indexed query instead: tests/test_search.py.)"""
from __future__ import annotations

from typing import Any

import pytest

from backend import ledger as ledger_module
from backend.app import Backend
from backend.ledger import WALK_BATCH, Ledger, utcnow
from tests.conftest import ALL_FLAVORS

LEDGER_FLAVORS = ALL_FLAVORS
ACTOR = "walked"
# The cap made small, so that the MongoDB code path (plain mongomock, which scans) walks past it quickly.
WALK_CAP = 8 * WALK_BATCH


@pytest.fixture(autouse=True)
def _actor(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "WALK_CAP", WALK_CAP)
    backend.subscriptions.subscribe(ACTOR, "walk.test")
    backend.declare()


def _settled(ledger: Ledger, count: int, payload: Any = None) -> list[str]:
    """`count` done messages in the actor's lane, oldest first; their ids."""
    first = ledger.allocate(ACTOR, count)
    now = utcnow()
    docs = []
    for seq in range(first, first + count):
        doc = ledger.new_message(ACTOR, seq, "walk.test", payload or {"booking": f"B-{seq}"}, f"order-{seq}")
        doc.update(status="done", attempts=1, published_at=now, started_at=now, finished_at=now, settled_at=now)
        docs.append(doc)
    for i in range(0, len(docs), 2000):
        ledger.insert(docs[i:i + 2000])
    return [d["_id"] for d in docs]


class Reads:
    """Counts the messages the ledger reads by id."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = ledger.by_ids

        def counted(ids: list[str], projection: dict[str, int] | None = None) -> list[dict[str, Any]]:
            self.count += len(ids)
            return real(ids, projection)

        monkeypatch.setattr(ledger, "by_ids", counted)


def test_a_rare_status_filter_stops_after_walk_cap_messages(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = backend.ledger
    _settled(ledger, WALK_CAP + WALK_BATCH)
    reads = Reads(ledger, monkeypatch)

    page, total = ledger.find(actor=ACTOR, status="failed", limit=10)

    assert page == [] and total is None
    assert WALK_CAP <= reads.count <= WALK_CAP + WALK_BATCH


def test_an_unfiltered_page_reads_the_page_not_the_history_and_counts_exactly(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = backend.ledger
    ids = _settled(ledger, 3 * WALK_BATCH)
    reads = Reads(ledger, monkeypatch)

    page, total = ledger.find(actor=ACTOR, limit=20, skip=20, sort="newest")

    assert [d["_id"] for d in page] == list(reversed(ids))[20:40]
    assert total == len(ids)
    assert reads.count <= WALK_BATCH


def test_the_console_says_more_than_shown_instead_of_a_count(admin_client: Any, backend: Backend) -> None:
    _settled(backend.ledger, WALK_CAP + WALK_BATCH)
    answer = admin_client.get(f"/actors/{ACTOR}?status=failed")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "None" not in html.split("Messages", 1)[1].split("</h2>", 1)[0]
    assert f"A filter reads at most {WALK_CAP:,} messages for one page, from the newest on" in " ".join(html.split())
