"""Availability on a 3-node RabbitMQ cluster: node loss, whole-cluster restart, lost quorum, and a
connector killed while a node is down. Answers the POC's question 3 with counts (docs/availability.md).

The cluster (scripts/cluster.sh through tests.cluster_harness) is started once for the session
on ports 5681-5683 / 15681-15683 and stopped at the end. Every test starts from three running
nodes and uses its own queue prefix and its own in-process ledger. Clients get the three
addresses (node 1 first), so their connections and the leaders of the quorum queues they declare
start on node 1. Each test prints one line of counts:

    emitted, confirmed by emit_event, confirmed by the relay, pending at the end, processed
    (handler calls), duplicates skipped by the connectors, order check.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
import requests

from backend import ledger_server
from backend.app import Backend
from backend.relay import Relay
from backend.settings import Settings
from backend.store import Store
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.availability_handlers import SCHEMA as HANDLER_SCHEMA
from tests.cluster_harness import NODES, Cluster, ClusterError, cluster_available
from tests.conftest import delete_prefixed
from tests.helpers import Recorder, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("guest", "guest")
ACTORS = ("payment", "shipping", "email", "erp", "stock")


# -- the cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The 3-node cluster for the whole session: started once, stopped (state deleted) at the end.
    A cluster that was already running (`make cluster-up`) is used and left running."""
    reason = cluster_available()
    if reason:
        pytest.fail(f"the availability tests need a local 3-node RabbitMQ cluster: {reason}", pytrace=False)
    c = Cluster()
    ours = not all(c.is_running(n) for n in NODES)
    try:
        c.start()
    except ClusterError as exc:
        pytest.fail(f"the 3-node RabbitMQ cluster (scripts/cluster.sh start) could not start:\n{exc}", pytrace=False)
    yield c
    if ours:
        c.stop()


def api_get(cluster: Cluster, path: str) -> Any:
    """GET from the management API of the first node that answers."""
    last: Exception | None = None
    for url in cluster.api_urls:
        try:
            resp = requests.get(f"{url}/api/{path}", auth=AUTH, timeout=5)
            resp.raise_for_status()
            return resp.json()
        except requests.RequestException as exc:
            last = exc
    raise AssertionError(f"no management API answers: {last}")


def running_api(cluster: Cluster) -> str:
    for url in cluster.api_urls:
        try:
            requests.get(f"{url}/api/overview", auth=AUTH, timeout=5).raise_for_status()
            return url
        except requests.RequestException:
            continue
    raise AssertionError("no management API answers")


def short(node: str) -> int:
    """rmq2@host -> 2"""
    return int(node.split("@")[0].removeprefix("rmq"))


def all_nodes_running(cluster: Cluster) -> bool:
    try:
        nodes = api_get(cluster, "nodes?columns=name,running")
    except AssertionError:
        return False
    return len(nodes) == 3 and all(n.get("running") for n in nodes)


def restart_nodes(cluster: Cluster, nodes: list[int]) -> None:
    """Start several nodes at once (a node may wait at boot for the peers it saw last)."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        for f in [pool.submit(cluster.start_node, n) for n in nodes]:
            f.result()
    wait_for(lambda: all_nodes_running(cluster), timeout=90, interval=0.5, what="3 nodes running")


def queue_info(cluster: Cluster, queue: str) -> dict[str, Any]:
    return api_get(cluster, f"queues/%2F/{requests.utils.quote(queue, safe='')}")


def leader_of(info: dict[str, Any]) -> int:
    return short(info.get("leader") or info["node"])


def wait_members_online(cluster: Cluster, queues: list[str], timeout: float = 90) -> None:
    def ok() -> bool:
        try:
            return all(len(queue_info(cluster, q).get("online", [])) == 3 for q in queues)
        except (AssertionError, KeyError):
            return False

    wait_for(ok, timeout=timeout, interval=0.5, what=f"every replica of {len(queues)} queues online")


def connection_nodes(cluster: Cluster) -> dict[int, int]:
    """How many client connections each node holds (the cluster serves only this test)."""
    out: dict[int, int] = {}
    for c in api_get(cluster, "connections?columns=node,client_properties"):
        if (c.get("client_properties") or {}).get("product") == "fifoq":
            out[short(c["node"])] = out.get(short(c["node"]), 0) + 1
    return dict(sorted(out.items()))


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """Three running nodes before each test, whatever the previous test left."""
    try:
        cluster.start()  # idempotent: starts the nodes that are down, in parallel
    except ClusterError as exc:
        pytest.fail(f"could not bring the cluster back to 3 nodes:\n{exc}", pytrace=False)
    wait_for(lambda: all_nodes_running(cluster), timeout=90, interval=0.5, what="3 nodes running")
    return cluster


def cluster_settings(cluster: Cluster, prefix: str, **changes: Any) -> Settings:
    base = dict(
        amqp_urls=tuple(cluster.amqp_urls),
        api_url=cluster.api_urls[0],
        prefix=prefix,
        mongodb_url=f"mongomock://{prefix}",
        mongodb_db=f"db_{prefix}",
        poll_interval=0.1,
        confirm_timeout=5.0,
        transient_backoff=0.05,
        gap_grace=10.0,
        relay_min_age=6.0,  # > confirm_timeout: the relay leaves emit_event's own publishes alone
    )
    base.update(changes)
    return Settings().with_(**base)


@pytest.fixture
def make_settings(healthy: Cluster, prefix: str) -> Iterator[Callable[..., Settings]]:
    made: list[Settings] = []

    def make(**changes: Any) -> Settings:
        made.append(cluster_settings(healthy, prefix, **changes))
        return made[-1]

    yield make
    for s in made[:1]:
        Store.open(s).drop()
    try:
        delete_prefixed(prefix, api_url=running_api(healthy), auth=AUTH)
    except AssertionError:
        pass


# -- the workload --------------------------------------------------------------------------------
@dataclass
class Tally:
    emitted: list[str] = field(default_factory=list)
    by_emit: set[str] = field(default_factory=set)
    by_relay: set[str] = field(default_factory=set)
    slowest_emit: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Scenario:
    """A backend, a background relay and an in-process connector runtime on the cluster."""

    def __init__(self, settings: Settings, actors: tuple[str, ...] = ACTORS) -> None:
        self.settings = settings
        self.actors = actors
        self.backend = Backend(settings)
        for a in actors:
            self.backend.subscriptions.subscribe(a, f"load.{a}")
        self.backend.declare()
        self.tally = Tally()
        self._count(self.backend.emitter.publisher, self.tally.by_emit)
        self.relay = Relay(settings, self.backend.ledger)
        self._count(self.relay.publisher, self.tally.by_relay)
        self.relay_stop = threading.Event()
        self.recorders = {a: Recorder() for a in actors}
        self.runtimes: list[Runtime] = []
        self.next_n = {a: 0 for a in actors}

    def _count(self, publisher: Any, into: set[str]) -> None:
        original = publisher.publish

        def publish(*args: Any, **kwargs: Any) -> set[str]:
            confirmed = original(*args, **kwargs)
            with self.tally.lock:
                into.update(confirmed)
            return confirmed

        publisher.publish = publish

    @property
    def queues(self) -> list[str]:
        return [self.settings.queue_name(a) for a in self.actors]

    def start_relay(self, interval: float = 0.5) -> None:
        self.relay.start(self.relay_stop, interval)

    def start_runtime(self) -> Runtime:
        reg = Registry()
        for a, rec in self.recorders.items():
            reg.register(a, rec)
        rt = Runtime(self.settings, self.backend.ledger, reg).start()
        self.runtimes.append(rt)
        return rt

    def events(self, count: int) -> list[tuple[str, dict]]:
        """`count` events round-robin over the actors, payload n counting per actor."""
        out = []
        for i in range(count):
            a = self.actors[i % len(self.actors)]
            out.append((f"load.{a}", {"n": self.next_n[a]}))
            self.next_n[a] += 1
        return out

    def emit(self, count: int, batch: int = 50) -> None:
        for start in range(0, count, batch):
            t0 = time.monotonic()
            ids = self.backend.emit_many(self.events(min(batch, count - start)))
            self.tally.slowest_emit = max(self.tally.slowest_emit, time.monotonic() - t0)
            self.tally.emitted.extend(i for group in ids for i in group)

    def emit_in_background(self, count: int, batch: int = 50) -> tuple[threading.Thread, list[BaseException]]:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.emit(count, batch)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the test
                errors.append(exc)

        t = threading.Thread(target=run, name="emitter", daemon=True)
        t.start()
        return t, errors

    def done_count(self) -> int:
        return sum(c.get("done", 0) for c in self.backend.ledger.status_counts().values())

    def wait_all_done(self, timeout: float = 180) -> None:
        total = len(self.tally.emitted)
        wait_for(lambda: self.done_count() == total, timeout=timeout, interval=0.5,
                 what=f"all {total} messages done (status: {self.backend.ledger.status_counts()})")

    def report(self, label: str) -> dict[str, Any]:
        counts = self.backend.ledger.status_counts()
        pending = sum(c.get("pending", 0) for c in counts.values())
        calls = sum(len(r.calls) for r in self.recorders.values())
        skipped = sum(w.stats.skipped for rt in self.runtimes for w in rt.workers.values())
        from_ledger = sum(w.stats.from_ledger for rt in self.runtimes for w in rt.workers.values())
        in_order = all(
            r.seqs() == list(range(1, self.next_n[a] + 1)) and [p["n"] for p in r.payloads()] == list(range(self.next_n[a]))
            for a, r in self.recorders.items()
        )
        emitted = set(self.tally.emitted)
        confirmed = self.tally.by_emit | self.tally.by_relay
        out = dict(
            emitted=len(emitted),
            confirmed_by_emit=len(self.tally.by_emit & emitted),
            confirmed_by_relay=len((self.tally.by_relay - self.tally.by_emit) & emitted),
            pending_at_end=pending,
            processed=calls,
            processed_from_ledger=from_ledger,
            duplicates_skipped=skipped,
            order_ok=in_order,
            lost_confirmed=len({m for m in confirmed & emitted if self.backend.ledger.message(m)["status"] != "done"}),
        )
        print(f"\n[{label}] " + ", ".join(f"{k}={v}" for k, v in out.items())
              + f", slowest emit_many={self.tally.slowest_emit:.2f}s")
        return out

    def assert_nothing_lost_in_order(self, result: dict[str, Any]) -> None:
        total = len(self.tally.emitted)
        assert result["lost_confirmed"] == 0
        assert result["pending_at_end"] == 0
        assert self.backend.ledger.status_counts() == {a: {"done": self.next_n[a]} for a in self.actors}
        # every handler saw its actor's messages once each, in emission order
        for a, rec in self.recorders.items():
            assert rec.seqs() == list(range(1, self.next_n[a] + 1)), a
            assert [p["n"] for p in rec.payloads()] == list(range(self.next_n[a])), a
        assert result["processed"] == total and result["order_ok"]

    def close(self) -> None:
        for rt in self.runtimes:
            rt.stop()
        self.relay_stop.set()
        self.relay.close()
        self.backend.close()


@pytest.fixture
def scenario(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(**changes: Any) -> Scenario:
        made.append(Scenario(make_settings(**changes)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def placement(cluster: Cluster, sc: Scenario) -> tuple[int, dict[int, int]]:
    """The node leading every actor queue (they all start on the clients' node) and the
    client connections per node."""
    leaders = {leader_of(queue_info(cluster, q)) for q in sc.queues}
    assert len(leaders) == 1, f"actor queues led by several nodes: {leaders}"
    # the management API lists a connection a moment after it opened: the emitter's and one per actor
    wait_for(lambda: sum(connection_nodes(cluster).values()) >= len(sc.actors) + 1, timeout=30, interval=0.5,
             what="the clients' connections listed by the management API")
    return leaders.pop(), connection_nodes(cluster)


def kill_during_emission(cluster: Cluster, sc: Scenario, total: int, victim: Callable[[], int]) -> int:
    """Emit `total` messages in the background while consuming; SIGKILL a node a third of the way."""
    t, errors = sc.emit_in_background(total)
    wait_for(lambda: len(sc.tally.emitted) >= total // 3 or not t.is_alive(), timeout=120, what="a third emitted")
    node = victim()
    cluster.kill(node)
    killed_at = len(sc.tally.emitted)
    t.join(300)
    assert not t.is_alive(), "emission did not finish"
    if errors:
        raise errors[0]
    assert killed_at < total, "the node was killed after emission had finished"
    return node


# -- (a) a follower node dies ----------------------------------------------------------------------
def test_availability_a_sigkill_follower_while_emitting_5000_over_5_actors(healthy: Cluster, scenario: Callable[..., Scenario]) -> None:
    sc = scenario()
    sc.start_relay()
    sc.start_runtime()
    sc.emit(50)  # consumers attached, connections visible
    wait_for(lambda: sc.done_count() == 50, timeout=60, what="warm-up processed")
    leader, conns = placement(healthy, sc)
    follower = next(n for n in NODES if n != leader and n not in conns)
    victim = kill_during_emission(healthy, sc, 4950, lambda: follower)
    print(f"\n[a] queue leader rmq{leader}, client connections per node {conns}, SIGKILLed follower rmq{victim}")
    sc.wait_all_done()
    restart_nodes(healthy, [victim])
    wait_members_online(healthy, sc.queues)
    result = sc.report("a follower killed")
    assert result["emitted"] == 5000
    sc.assert_nothing_lost_in_order(result)


# -- (b) the leader node, which the clients are connected to, dies ----------------------------------
def test_availability_b_sigkill_leader_node_the_clients_use(healthy: Cluster, scenario: Callable[..., Scenario]) -> None:
    sc = scenario()
    sc.start_relay()
    sc.start_runtime()
    sc.emit(50)
    wait_for(lambda: sc.done_count() == 50, timeout=60, what="warm-up processed")
    leader, conns = placement(healthy, sc)
    assert set(conns) == {leader}, f"clients should all be on the leader's node: leader rmq{leader}, connections {conns}"
    victim = kill_during_emission(healthy, sc, 4950, lambda: leader)
    sc.wait_all_done()
    new_leaders = sorted({leader_of(queue_info(healthy, q)) for q in sc.queues})
    after = connection_nodes(healthy)
    print(f"\n[b] leader and client node rmq{victim} SIGKILLed; new leaders {new_leaders}, client connections per node {after}")
    assert victim not in after and victim not in new_leaders
    restart_nodes(healthy, [victim])
    wait_members_online(healthy, sc.queues)
    result = sc.report("b leader+client node killed")
    assert result["emitted"] == 5000
    sc.assert_nothing_lost_in_order(result)


# -- (c) the whole cluster stops and starts again ---------------------------------------------------
def queue_depths(cluster: Cluster, queues: list[str]) -> dict[str, int]:
    conn = pika.BlockingConnection([pika.URLParameters(u) for u in cluster.amqp_urls])
    try:
        ch = conn.channel()
        return {q: ch.queue_declare(q, passive=True).method.message_count for q in queues}
    finally:
        conn.close()


def test_availability_c_stop_all_three_nodes_and_start_again(healthy: Cluster, scenario: Callable[..., Scenario]) -> None:
    sc = scenario()
    sc.emit(1000)
    assert len(sc.tally.by_emit) == 1000, "every message confirmed before the outage"
    rt = sc.start_runtime()
    wait_for(lambda: sc.done_count() >= 300, timeout=60, what="300 processed")
    rt.stop()
    open_before = {a: sc.next_n[a] - c.get("done", 0) for a, c in sc.backend.ledger.status_counts().items()}
    depths_before = queue_depths(healthy, sc.queues)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(healthy.stop_node, NODES))
    assert not any(healthy.is_running(n) for n in NODES)
    # the backend keeps accepting events while no node runs: they wait in the ledger
    t0 = time.monotonic()
    sc.emit(100)
    during = time.monotonic() - t0
    pending_during = sum(c.get("pending", 0) for c in sc.backend.ledger.status_counts().values())
    healthy.start()
    wait_for(lambda: all_nodes_running(healthy), timeout=90, interval=0.5, what="3 nodes running")
    wait_members_online(healthy, sc.queues)
    depths_after = queue_depths(healthy, sc.queues)
    print(f"\n[c] open messages per actor before the stop {open_before}; queue depths before {sorted(depths_before.values())}, "
          f"after the restart {sorted(depths_after.values())}; 100 emitted with no node running in {during:.2f}s, "
          f"{pending_during} pending")
    assert depths_after == depths_before
    assert depths_after == {sc.settings.queue_name(a): n for a, n in open_before.items()}
    assert pending_during == 100
    sc.start_relay()
    sc.start_runtime()
    sc.wait_all_done()
    result = sc.report("c full cluster restart")
    assert result["emitted"] == 1100 and result["confirmed_by_relay"] == 100
    sc.assert_nothing_lost_in_order(result)


# -- (d) two of three nodes down: no quorum --------------------------------------------------------
def test_availability_d_two_nodes_down_emit_returns_and_messages_wait_in_the_ledger(healthy: Cluster, scenario: Callable[..., Scenario]) -> None:
    sc = scenario(confirm_timeout=2.0, relay_min_age=3.0)
    sc.start_relay()
    sc.start_runtime()
    sc.emit(250)
    wait_for(lambda: sc.done_count() == 250, timeout=60, what="first 250 processed")
    leader, _conns = placement(healthy, sc)
    down = [n for n in NODES if n != leader]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(healthy.kill, down))
    durations = []
    outage_ids: list[str] = []
    for _ in range(5):
        t0 = time.monotonic()
        ids = sc.backend.emit_event(*sc.events(1)[0])
        durations.append(time.monotonic() - t0)
        sc.tally.emitted += ids
        outage_ids += ids
    t0 = time.monotonic()
    before = len(sc.tally.emitted)
    sc.emit(50)
    durations.append(time.monotonic() - t0)
    outage_ids += sc.tally.emitted[before:]
    statuses = [sc.backend.ledger.message(m)["status"] for m in outage_ids]
    pending_during = statuses.count("pending")
    print(f"\n[d] nodes {down} killed, leader rmq{leader} alone: 5 emit_event calls took "
          f"{', '.join(f'{d:.2f}s' for d in durations[:5])}; emit_many of 50 took {durations[5]:.2f}s; "
          f"{pending_during} of {len(outage_ids)} pending, none processed: {sc.done_count() == 250}")
    assert all(d < 30 for d in durations)
    assert pending_during == len(outage_ids) == 55
    restart_nodes(healthy, down)
    sc.wait_all_done()
    result = sc.report("d quorum lost then back")
    assert result["emitted"] == 305
    sc.assert_nothing_lost_in_order(result)


# -- (e) a connector killed mid-handler while a node is down ---------------------------------------
def test_availability_e_connector_killed_mid_handler_while_a_node_is_down(
        healthy: Cluster, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    backend = Backend(settings)
    backend.subscriptions.subscribe("ledgerbook", "book")
    backend.declare()
    stop_relay = threading.Event()
    Relay(settings, backend.ledger).start(stop_relay, 0.5)
    server, url = ledger_server.serve(backend.ledger)
    dbfile = tmp_path / "external.sqlite"
    with sqlite3.connect(dbfile) as c:
        c.executescript(HANDLER_SCHEMA)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MONGODB_URL=url, FIFOQ_PREFIX=settings.prefix,
               AMQP_URL=",".join(settings.amqp_urls), FIFOQ_POLL_INTERVAL="0.1", FIFOQ_GAP_GRACE="10",
               AVAIL_DB=str(dbfile), LOG_LEVEL="WARNING")
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "connectors", "run", "ledgerbook", *args, "--module", "tests.availability_handlers"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        return p

    def q(sql: str, *params: object) -> list[tuple]:
        c = sqlite3.connect(dbfile, timeout=30)
        try:
            return c.execute(sql, params).fetchall()
        finally:
            c.close()

    emitted: list[str] = []

    def emit(lo: int, hi: int, hold: int) -> None:
        for s in range(lo, hi, 50):
            ids = backend.emit_many([("book", {"n": n, **({"hold": True} if n == hold else {})}) for n in range(s, min(s + 50, hi))])
            emitted.extend(i for group in ids for i in group)

    try:
        emit(0, 200, hold=-1)
        first = start()
        wait_for(lambda: q("SELECT COUNT(*) FROM effects")[0][0] >= 50, timeout=60, what="50 effects")
        leader = leader_of(queue_info(healthy, settings.queue_name("ledgerbook")))
        wait_for(lambda: sum(connection_nodes(healthy).values()) >= 2, timeout=30, interval=0.5,
                 what="the backend's and the connector's connections listed by the management API")
        conns = connection_nodes(healthy)
        healthy.kill(leader)  # the queue's leader, which the connector and the backend use
        emit(200, 400, hold=300)  # the backend goes on emitting through another node
        wait_for(lambda: q("SELECT COUNT(*) FROM calls WHERE n = 300 AND ended IS NULL")[0][0] == 1, timeout=120,
                 what="the connector inside the handler of message 300")
        first.send_signal(signal.SIGKILL)
        first.wait()
        open_calls = q("SELECT COUNT(*) FROM calls WHERE pid = ? AND ended IS NULL", first.pid)[0][0]
        assert not healthy.is_running(leader)
        second = start("--drain", "--timeout", "180")
        _, err = second.communicate(timeout=240)
        assert second.returncode == 0, err.decode()[-3000:]
        still_down = not healthy.is_running(leader)
        effects = q("SELECT seq, n FROM effects ORDER BY id")
        twice = q("SELECT n, COUNT(*) FROM calls GROUP BY message_id HAVING COUNT(*) > 1")
        docs, _ = backend.ledger.find(actor="ledgerbook", limit=1000)
        interrupted = sorted(d["payload"]["n"] for d in docs if any(a["outcome"] == "interrupted" for a in d.get("attempt_log", [])))
        counts = backend.ledger.status_counts()
        print(f"\n[e] rmq{leader} (leader; client connections per node {conns}) SIGKILLed, then the connector SIGKILLed "
              f"inside message 300's handler ({open_calls} open call); the second connector drained with rmq{leader} "
              f"still down: {still_down}. emitted={len(emitted)}, effects={len(effects)}, handler called twice for n={[n for n, _ in twice]}, "
              f"interrupted attempts n={interrupted}, ledger={counts}, order_ok={[n for _, n in effects] == list(range(400))}")
        assert open_calls == 1 and still_down
        assert [n for _, n in effects] == list(range(400))
        assert [s for s, _ in effects] == list(range(1, 401))
        assert counts == {"ledgerbook": {"done": 400}}
        assert [n for n, _ in twice] == [300] and interrupted == [300]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        stop_relay.set()
        server.stop_event.set()
        backend.close()
    restart_nodes(healthy, [leader])
