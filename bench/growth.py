"""7. The console and a fresh connector as the ledger fills: the same requests at 3,000, 30,000 and
300,000 settled messages over 100 actors, on the embedded store.

The ledger is filled the way a long run leaves it: settled messages (done, with their attempt
log) in every lane, the lanes' watermarks and counters moved over them; the measured actor holds a
tenth of them (so that its tenth page exists at every size), the others share the rest. Then, at each size: the
overview, an actor's page, the first and a deep page of its message list (newest first), a
correlation-id trace and a payload search for a recent message's email (Flask test client), and a connector started on a
lane with 500 new messages. Each is reported at the largest size against its value at the
smallest (target: within 1.5x).
"""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from admin.rabbitmq_api import RabbitAPI
from backend.app import Backend
from backend.lanes import Tally
from backend.ledger import utcnow
from bench.common import Options, Table, bench_settings, percentile
from bench.console import console_client, timed
from connectors.registry import Registry
from connectors.runtime import Runtime

ACTORS = 100
SIZES = (3_000, 30_000, 300_000)
QUICK_SIZES = (300, 3_000)
FRESH = 500


def _fill(backend: Backend, actors: list[str], upto: int, done_per_actor: dict[str, int]) -> None:
    """Settled messages up to `upto` in all, spread over the actors, stored and folded."""
    ledger = backend.ledger
    hot = upto // 10  # the measured actor holds a tenth, so that its deep page exists at every size
    per_actor = (upto - hot) // (len(actors) - 1)
    for n, actor in enumerate(actors):
        have = done_per_actor[actor]
        want = hot if n == 0 else per_actor
        if want <= have:
            continue
        first = ledger.allocate(actor, want - have)
        now = utcnow()
        docs = []
        for seq in range(first, first + want - have):
            doc = ledger.new_message(actor, seq, "bench.growth", {"booking": f"B-{n}-{seq}", "amount": seq % 997,
                                                                  "customer": {"email": f"c{seq}@example.com"}},
                                     f"order-{n}-{seq}")
            doc.update(status="done", attempts=1, published_at=now, started_at=now, finished_at=now, settled_at=now,
                       attempt_log=[{"attempt": 1, "owner": "bench", "started_at": now, "finished_at": now,
                                     "outcome": "done", "error": None}])
            docs.append(doc)
        for i in range(0, len(docs), 2000):
            ledger.insert(docs[i:i + 2000])
        lane = ledger.lane(actor)
        tally = Tally()
        tally.add("done", len(docs))
        ledger.lanes.advance(lane, first + len(docs) - 1, tally)
        done_per_actor[actor] = want


def _fresh_connector_rate(backend: Backend, actor: str) -> float:
    for i in range(0, FRESH, 100):
        backend.emit_many([("bench.fresh", {"i": j}) for j in range(i, i + 100)])
    backend.emitter.flush()
    reg = Registry()
    reg.register(actor, lambda _m: None)
    started = time.perf_counter()
    stats = Runtime(backend.settings, backend.ledger, reg, [actor]).run(drain=True, timeout=300)
    elapsed = time.perf_counter() - started
    if stats[actor].processed != FRESH:
        raise RuntimeError(f"the fresh connector processed {stats[actor].processed} of {FRESH}")
    return FRESH / elapsed


def _check_search(client: Any, path: str, email: str) -> None:
    """The search measured finds the one message with that email (not a fast empty answer)."""
    found = client.get(path).get_json()
    emails = [m["payload"]["customer"]["email"] for m in found["items"]]
    if emails != [email] or found["total"] != 1:
        raise RuntimeError(f"GET {path}: found {emails} (total {found['total']}), expected [{email!r}]")


def _declared(settings: Any, actors: list[str]) -> Backend:
    backend = Backend(settings)
    for actor in actors:
        backend.subscriptions.actor(actor)
        backend.subscriptions.subscribe(actor, "bench.growth")
    backend.subscriptions.actor("fresh")
    backend.subscriptions.subscribe("fresh", "bench.fresh")
    backend.declare()
    return backend


def _search_email(top: int) -> str:
    """The email of a recent message of the measured actor (`top`: its newest number)."""
    return f"c{max(1, top - 20)}@example.com"


def _paths(actor: str, top: int) -> dict[str, str]:
    return {
        "overview": "/api/overview",
        "actor page": f"/actors/{actor}",
        "message list, first page (20)": f"/api/actors/{actor}/messages?per_page=20",
        "message list, page 10 (20 per page)": f"/api/actors/{actor}/messages?page=10&per_page=20",
        "correlation-id trace": f"/api/trace/order-0-{max(1, top - 5)}",
        "payload search (a recent message)": f"/api/actors/{actor}/messages?q={quote(_search_email(top))}",
    }


def run(opts: Options) -> Table:
    sizes = QUICK_SIZES if opts.quick else SIZES
    requests = max(3, opts.requests)
    table = Table(f"7. Growth: the same requests at {', '.join(f'{s:,}' for s in sizes)} settled messages over "
                  f"{ACTORS} actors (embedded ledger), {requests} requests each")
    with bench_settings("growth", opts) as settings, bench_settings("growthref", opts) as ref_settings:
        actors = [f"g{n:03d}" for n in range(ACTORS)]
        backend = _declared(settings, actors)
        ref: Backend | None = None
        try:
            # A second ledger that stays at the smallest size, in the same process, its requests
            # interleaved with the growing one's: what the growing ledger costs a request, apart
            # from what the machine and the process do meanwhile (docs/benchmarks.md, section 7).
            ref = _declared(ref_settings, actors)
            client = console_client(backend, RabbitAPI.from_settings(settings))
            ref_client = console_client(ref, RabbitAPI.from_settings(ref_settings))
            done = dict.fromkeys(actors, 0)
            ref_done = dict.fromkeys(actors, 0)
            _fill(ref, actors, sizes[0], ref_done)
            ref_paths = _paths(actors[0], ref_done[actors[0]])
            results: dict[int, dict[str, float]] = {}
            beside: dict[int, dict[str, float]] = {}
            for size in sizes:
                _fill(backend, actors, size, done)
                paths = _paths(actors[0], done[actors[0]])
                for c, ps, top in ((client, paths, done[actors[0]]), (ref_client, ref_paths, ref_done[actors[0]])):
                    timed(c, "/api/overview", 1)  # warm-up
                    _check_search(c, ps["payload search (a recent message)"], _search_email(top))
                row: dict[str, float] = {}
                ref_row: dict[str, float] = {}
                for label, path in paths.items():
                    t: list[float] = []
                    t_ref: list[float] = []
                    for _ in range(requests):  # one each, in turn
                        t += timed(client, path, 1)
                        t_ref += timed(ref_client, ref_paths[label], 1)
                    for out, times in ((row, t), (ref_row, t_ref)):
                        out[f"{label} p50 (ms)"] = percentile(times, 50) * 1000
                        out[f"{label} p95 (ms)"] = percentile(times, 95) * 1000
                row["fresh connector (msg/s)"] = _fresh_connector_rate(backend, "fresh")
                results[size] = row
                beside[size] = ref_row
            small, large = sizes[0], sizes[-1]
            for measure, value in results[large].items():
                higher = measure.endswith("(msg/s)")
                table.add(f"{measure} at {large:,}", value, results[small][measure], f"the same at {small:,}",
                          "msg/s" if higher else "ms", higher_is_better=higher)
            for measure, value in results[large].items():
                if measure in beside[large]:
                    table.add(f"{measure} at {large:,}, against a {small:,}-message ledger at the same time",
                              value, beside[large][measure], f"{small:,} messages, same process, interleaved", "ms",
                              higher_is_better=False)
            for size in sizes[1:-1]:
                table.notes.append(f"at {size:,}: " + "; ".join(f"{m} {v:,.1f}" for m, v in results[size].items()))
            table.notes.append("Target: each value at the largest size within 1.5x of the smallest. The overview, the "
                               "actor page and a connector's start read lane documents and messages by id; a list "
                               "walks the actor's lanes by id; a trace uses the correlation index (on the embedded "
                               "store, its equality map). A payload search (the words of a recent message's email) "
                               "is one query on the words stored with each message (index actor_terms_created; "
                               "on the embedded store, a map of each word to the messages holding it): it costs "
                               "the messages holding its rarest word up to the page, not the actor's messages.")
            table.notes.append(f"\"Against a {small:,}-message ledger at the same time\": a second ledger of "
                               f"{ACTORS} actors kept at {small:,} messages in the same process, each request to "
                               "it made right after the same request to the growing ledger; the process holding "
                               "the growing ledger's messages slows down every request, to either ledger alike.")
        finally:
            try:
                backend.close()
            finally:
                if ref is not None:
                    ref.close()
    return table
