"""3. End-to-end: latency from emit_event to the handler's success at a fixed rate (one actor),
and throughput with 10 actors while emitting and consuming at the same time."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from backend.app import Backend
from bench import baseline
from bench.common import Options, Table, bench_settings, percentile
from connectors.registry import Registry
from connectors.runtime import Runtime

EVENT = "bench.e2e"


def noop(_message: object) -> None:
    return None


def _runtime(backend: Backend, actors: list[str], on_done: Callable[[str], None]) -> Runtime:
    reg = Registry()
    for actor in actors:
        reg.register(actor, noop)

    def on_event(kind: str, _actor: str, doc: dict[str, Any], _seconds: float) -> None:
        if kind == "done":
            on_done(doc["_id"])

    return Runtime(backend.settings, backend.ledger, reg, actors, on_event=on_event)


def fifoq_latency(backend: Backend, count: int, rate: float) -> list[float]:
    backend.subscriptions.subscribe("l1", EVENT)
    backend.declare()
    finished: dict[str, float] = {}
    all_done = threading.Event()

    def on_done(mid: str) -> None:
        finished[mid] = time.perf_counter()
        if len(finished) >= count:
            all_done.set()

    runtime = _runtime(backend, ["l1"], on_done).start()
    started_at: dict[str, float] = {}
    try:
        time.sleep(0.5)  # let the worker open its consumer
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            for mid in backend.emit_event(EVENT, {"i": i}):
                started_at[mid] = t0
        if not all_done.wait(120):
            raise TimeoutError(f"{len(finished)} of {count} done")
    finally:
        runtime.stop()
    return [finished[m] - started_at[m] for m in started_at]


def fifoq_e2e(backend: Backend, actors: list[str], events: int, batch: int) -> float:
    for actor in actors:
        backend.subscriptions.subscribe(actor, EVENT)
    backend.declare()
    total = events * len(actors)
    count = [0]
    lock = threading.Lock()
    all_done = threading.Event()

    def on_done(_mid: str) -> None:
        with lock:
            count[0] += 1
            if count[0] >= total:
                all_done.set()

    runtime = _runtime(backend, actors, on_done)
    started = time.perf_counter()
    runtime.start()
    try:
        for lo in range(0, events, batch):
            backend.emit_many([(EVENT, {"i": i}) for i in range(lo, min(events, lo + batch))])
        if not all_done.wait(600):
            raise TimeoutError(f"{count[0]} of {total} done")
        return time.perf_counter() - started
    finally:
        runtime.stop()


def run(opts: Options) -> Table:
    table = Table(f"3. End to end, {opts.queue_type.value} queues: emit -> handler done")
    with bench_settings("lat", opts) as settings:
        backend = Backend(settings)
        try:
            lat = fifoq_latency(backend, opts.latency_messages, opts.rate)
        finally:
            backend.close()
        raw = f"{settings.prefix}.raw.lat"
        baseline.declare(settings, [raw])
        base = baseline.latency(settings, raw, opts.latency_messages, opts.rate, settings.prefetch)
    for p in (50, 95, 99):
        table.add(f"latency p{p} at {opts.rate:.0f} msg/s, 1 actor (ms)", percentile(lat, p) * 1000,
                  percentile(base, p) * 1000, "publish (wait for its confirm) -> consumer acks", "ms",
                  higher_is_better=False)
    actors = [f"e{i}" for i in range(10)]
    events = max(1, opts.messages // len(actors))
    batch = max(1, 300 // len(actors))
    with bench_settings("e2e", opts) as settings:
        backend = Backend(settings)
        try:
            fifoq = fifoq_e2e(backend, actors, events, batch)
        finally:
            backend.close()
        raw_q = [f"{settings.prefix}.raw.{i}" for i in range(len(actors))]
        baseline.declare(settings, raw_q)
        base_s = baseline.end_to_end(settings, raw_q, events, settings.prefetch, batch=batch * len(actors))
    total = events * len(actors)
    table.add(f"10 actors, emit_many ({batch} events x 10 actors per call) while consuming (messages/s)",
              total / fifoq, total / base_s, "pipelined publish while 10 consumers ack", "msg/s")
    table.notes.append(f"{opts.latency_messages} messages for the latency rows, {total} for the throughput row; "
                       "emitter and connectors run in one process (threads), as the baseline does.")
    return table
