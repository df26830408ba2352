"""Every query the console, its JSON API and the command line run has an index that serves it:
recorded while they answer, then checked against the indexes each collection declares.

A query is served when its filter has an `_id` lookup, or an index begins with some of its
equality fields (at least one when it has any), then its sort (all in the index's direction or
all reversed), so that the database walks one index range in order and stops at the page's end;
range conditions are checked on what that range yields. A payload search's words (`terms:
{$all: [...]}`, an equality on a multikey field) must be among those leading fields: checked
after the range, they would cost the actor's whole history. Without this, a list would cost the
whole collection on every request."""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

import pytest
from flask.testing import FlaskClient

from backend.app import Backend
from backend.store import Collection, Cursor
from tests.helpers import Blocked

Query = tuple[str, str, dict[str, Any], list[tuple[str, int]]]
# Collections read whole on purpose: their size is bounded by the actors, not by the messages.
READ_WHOLE = {
    "console_watch": "one document per alert condition that holds now (admin/watch.py)",
}


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Query]:
    seen: list[Query] = []
    real_run = Cursor._run

    def run(self: Cursor) -> Any:
        seen.append((self._col.name, "find", dict(self._filter), list(self._sort or [])))
        return real_run(self)

    monkeypatch.setattr(Cursor, "_run", run)
    for what in ("find_one", "count_documents", "find_one_and_update", "update_one", "update_many", "delete_one", "delete_many"):
        real = getattr(Collection, what)

        def wrapper(self: Collection, filter: Any = None, *args: Any, _real: Any = real, _what: str = what, **kw: Any) -> Any:
            sort = kw.get("sort") or []
            seen.append((self.name, _what, dict(filter or {}), list(sort)))
            return _real(self, filter, *args, **kw)

        monkeypatch.setattr(Collection, what, wrapper)
    return seen


def _fields(flt: dict[str, Any]) -> tuple[set[str], set[str], bool]:
    """(equality fields, those of them an index must begin with (`$all`), has an _id lookup)."""
    eq: set[str] = set()
    required: set[str] = set()
    for key, value in flt.items():
        if key.startswith("$"):
            continue
        if not isinstance(value, dict) or set(value) <= {"$in", "$eq"}:
            eq.add(key)
        elif set(value) == {"$all"}:
            eq.add(key)
            required.add(key)
    return eq, required, "_id" in eq


def served(indexes: dict[str, Any], flt: dict[str, Any], sort: list[tuple[str, int]]) -> str | None:
    """The name of an index that serves the query (see the module docstring), or None."""
    eq, required, by_id = _fields(flt)
    if by_id:
        return "_id_"
    sort = [(f, d) for f, d in sort if f not in eq]
    for name, info in indexes.items():
        keys = [(f, int(d)) for f, d in info["key"]]
        n = 0
        while n < len(keys) and keys[n][0] in eq:
            n += 1
        if (eq and n == 0) or not required <= {f for f, _ in keys[:n]}:
            continue
        rest = keys[n:n + len(sort)]
        if len(rest) < len(sort) or [f for f, _ in rest] != [f for f, _ in sort]:
            continue
        same = all(d == sd for (_, d), (_, sd) in zip(rest, sort, strict=True))
        reverse = all(d == -sd for (_, d), (_, sd) in zip(rest, sort, strict=True))
        if same or reverse:
            return name
    return None


def test_indexes_serve_every_query_of_the_console_api_and_cli(
        recorded: list[Query], backend: Backend, blocked: Blocked, admin_client: FlaskClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    failed = blocked.failed_id
    paths = [
        "/", "/?blocked=1", "/?name=pay", "/actors/payment", "/actors/payment?status=failed", "/actors/payment?status=done&event=tour.booked",
        "/actors/payment?q=alice&sort=oldest", "/actors/payment?since=2020-01-01&until=2100-01-01&page=2",
        f"/messages/{failed}", "/audit", "/audit?actor=payment", "/audit?user=otto", "/audit?action=edit", f"/audit?message_id={failed}",
        "/users", "/failures", "/trace?correlation_id=nothing", "/releases",
        "/api/overview", "/api/actors/payment", "/api/actors/payment/keys", "/api/actors/payment/consistency",
        "/api/actors/payment/messages?status=queued&sort=oldest&page=1", "/api/actors/payment/messages?q=a%40example.com",
        "/api/actors/payment/messages?q=example&per_page=1", "/api/actors/payment/messages?q=example+com&per_page=1&page=2",
        "/api/actors/payment/messages?q=example&status=failed&event=tour.booked&since=2020-01-01&until=2100-01-01&sort=oldest",
        f"/api/actors/payment/messages?q={failed}",
        f"/api/messages/{failed}", "/api/audit?actor=payment&since=2020-01-01", "/api/users", "/api/alerts", "/api/charts",
        "/api/failures", f"/api/trace/{failed}", "/metrics", "/api/me",
    ]
    for path in paths:
        resp = admin_client.get(path)
        assert resp.status_code in (200, 404), (path, resp.status_code)
    from backend import cli

    for name, value in (("MONGODB_URL", backend.settings.mongodb_url), ("MONGODB_DB", backend.settings.mongodb_db),
                        ("FIFOQ_PREFIX", backend.settings.prefix)):
        monkeypatch.setenv(name, value)
    with redirect_stdout(io.StringIO()):
        for argv in (["status"], ["show", failed], ["reindex-search"], ["reindex-search", "--actor", "payment", "--batch", "2"]):
            cli.main(argv)
    assert backend.store is not None
    indexes = {name: backend.store.col(name).index_information() for name in {q[0] for q in recorded}}
    missing = sorted({(col, what, repr(flt), repr(sort)) for col, what, flt, sort in recorded
                      if served(indexes[col], flt, sort) is None and not (col in READ_WHOLE and not flt and not sort)})
    assert not missing, "queries without an index:\n" + "\n".join(" ".join(m) for m in missing)
    assert {"messages", "lanes", "actors", "audit"} <= {q[0] for q in recorded}


def test_indexes_checker_refuses_a_query_no_index_serves() -> None:
    indexes = {"actor_created": {"key": [("actor", 1), ("created_at", -1), ("seq", -1)]}}
    assert served(indexes, {"actor": "a"}, [("created_at", -1), ("seq", -1)]) == "actor_created"
    assert served(indexes, {"actor": "a"}, [("created_at", 1), ("seq", 1)]) == "actor_created"  # walked backwards
    assert served(indexes, {"actor": "a", "status": "done"}, [("created_at", -1), ("seq", -1)]) == "actor_created"
    assert served(indexes, {"status": "done"}, [("created_at", -1)]) is None  # no prefix of its equality fields
    assert served(indexes, {"actor": "a"}, [("finished_at", -1)]) is None  # the sort is not the index's
    assert served(indexes, {"actor": "a"}, [("created_at", -1), ("seq", 1)]) is None  # mixed directions
    assert served(indexes, {"_id": {"$in": ["x"]}}, []) == "_id_"
    # a payload search's words are a multikey equality the index must begin with
    search = {"actor": "a", "terms": {"$all": ["x", "y"]}, "status": "done", "created_at": {"$gte": 0}}
    assert served(indexes, search, [("created_at", -1), ("seq", -1)]) is None  # would read the actor's history
    indexes["actor_terms_created"] = {"key": [("actor", 1), ("terms", 1), ("created_at", -1), ("seq", -1)]}
    assert served(indexes, search, [("created_at", 1), ("seq", 1)]) == "actor_terms_created"
