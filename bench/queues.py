"""4. Dynamic queues: time and broker memory to create N actors (1,000 by default)."""
from __future__ import annotations

import time

from backend.app import Backend
from bench import baseline
from bench.common import Options, Table, bench_settings, broker_memory, cleanup, settle_memory

EVENT = "bench.dyn"


def create_actors(backend: Backend, count: int, event: str = EVENT) -> float:
    """Declare `count` actors (ledger document + queue + binding each); returns seconds."""
    for i in range(count):
        backend.subscriptions.subscribe(f"d{i:05d}", event)
    started = time.perf_counter()
    backend.declare()
    return time.perf_counter() - started


def run(opts: Options) -> Table:
    n = opts.actors
    table = Table(f"4. Dynamic queues: create {n} actors, {opts.queue_type.value} queues")
    # The node's figures refresh every 5 s: wait 6 s before each read (quick mode: a smoke run,
    # its memory figures are not meaningful anyway).
    wait = 0.2 if opts.quick else 6.0
    with bench_settings("dyn", opts) as settings:
        before = settle_memory(settings, min(wait, 1.0))
        backend = Backend(settings)
        try:
            fifoq = create_actors(backend, n)
        finally:
            backend.close()
        after = settle_memory(settings, wait)
        cleanup(settings)
        raw_before = settle_memory(settings, wait)
        raw = [f"{settings.prefix}.raw.{i:05d}" for i in range(n)]
        base = baseline.declare(settings, raw)
        raw_after = settle_memory(settings, wait)
    table.add(f"time to create {n} actors (s)", fifoq, base, "queue.declare with the same arguments", "s",
              higher_is_better=False)
    table.add("actors created per second", n / fifoq, n / base, "queue.declare with the same arguments", "/s")
    mib = 1024 * 1024
    table.add("broker memory added (MiB)", (after - before) / mib, (raw_after - raw_before) / mib,
              "same number of queues", "MiB", higher_is_better=False)
    table.add("broker memory per queue (KiB)", (after - before) / n / 1024, (raw_after - raw_before) / n / 1024,
              "same number of queues", "KiB", higher_is_better=False)
    table.notes.append("fifoq also writes each actor's state document to the ledger and binds the queue to its "
                       "exchange. Memory is the management API's mem_used summed over nodes, read 6 s after "
                       "creation (its refresh interval is 5 s): noisy, other processes share the broker. "
                       f"Broker total after the fifoq run: {broker_memory(settings) / mib:.0f} MiB.")
    return table
