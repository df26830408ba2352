"""2. Connector throughput for a no-op handler: one actor, then 10 actors together."""
from __future__ import annotations

import threading
import time

from backend.app import Backend
from backend.settings import Settings
from bench import baseline
from bench.common import Options, Table, bench_settings
from connectors.registry import Registry
from connectors.runtime import Runtime

EVENT = "bench.work"


def noop(_message: object) -> None:
    return None


def fill(backend: Backend, actors: list[str], per_actor: int) -> None:
    for actor in actors:
        backend.subscriptions.subscribe(actor, EVENT)
    backend.declare()
    for lo in range(0, per_actor, 200):
        backend.emit_many([(EVENT, {"i": i}) for i in range(lo, min(per_actor, lo + 200))])


def drain_seconds(settings: Settings, backend: Backend, actors: list[str], total: int, timeout: float = 600) -> float:
    """Start the runtime and time it until `total` handlers have succeeded."""
    reg = Registry()
    for actor in actors:
        reg.register(actor, noop)
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def on_event(kind: str, _actor: str, _doc: dict, _seconds: float) -> None:
        if kind == "done":
            with lock:
                count[0] += 1
                if count[0] >= total:
                    done.set()

    runtime = Runtime(settings, backend.ledger, reg, actors, on_event=on_event)
    started = time.perf_counter()
    runtime.start()
    try:
        if not done.wait(timeout):
            raise TimeoutError(f"runtime processed {count[0]} of {total} in {timeout}s")
        return time.perf_counter() - started
    finally:
        runtime.stop()


def run(opts: Options) -> Table:
    n = opts.messages
    table = Table(f"2. Connector throughput, no-op handler, {opts.queue_type.value} queues, prefetch {{prefetch}}, "
                  f"{n} messages per measure")
    for actors in (1, 10):
        names = [f"c{i}" for i in range(actors)]
        per_actor = max(1, n // actors)
        with bench_settings(f"conn{actors}", opts) as settings:
            prefetch = settings.prefetch
            backend = Backend(settings)
            try:
                fill(backend, names, per_actor)
                fifoq = drain_seconds(settings, backend, names, per_actor * actors)
            finally:
                backend.close()
            raw = [f"{settings.prefix}.raw.{i}" for i in range(actors)]
            baseline.declare(settings, raw)
            baseline.fill(settings, raw, per_actor)
            if actors == 1:
                base = baseline.consume_ack(settings, raw[0], per_actor, prefetch)
            else:
                base = baseline.consume_ack_many(settings, raw, per_actor, prefetch)
        total = per_actor * actors
        table.add(f"{actors} actor(s) together (messages/s)", total / fifoq, total / base,
                  f"consume + ack, prefetch {prefetch}, {'1 connection' if actors == 1 else 'a connection per queue'}",
                  "msg/s")
    table.title = table.title.format(prefetch=prefetch)
    table.notes.append("Per message the runtime settles the previous message and claims this one in one ledger write, "
                       "runs the handler on the worker's thread, then acks (one basic.ack multiple per run); the "
                       "baseline only acks.")
    return table
