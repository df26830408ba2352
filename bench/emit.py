"""1. Emit throughput with publisher confirms, each event fanned out to 3 actors."""
from __future__ import annotations

import time

from backend.app import Backend
from bench import baseline
from bench.common import Options, Table, bench_settings

ACTORS = ("a1", "a2", "a3")
EVENT = "bench.event"


def payload(i: int) -> dict:
    return {"order": i, "customer": {"email": f"c{i}@example.com"}, "amount": 12.5, "note": "x" * 120}


def run(opts: Options) -> Table:
    events = max(1, opts.messages // len(ACTORS))
    messages = events * len(ACTORS)
    table = Table(f"1. Emit throughput, {opts.queue_type.value} queues, 1 event -> {len(ACTORS)} actors, "
                  f"{messages} messages per measure")
    with bench_settings("emit", opts) as settings:
        backend = Backend(settings)
        try:
            for actor in ACTORS:
                backend.subscriptions.subscribe(actor, EVENT)
            backend.declare()
            started = time.perf_counter()
            for i in range(events):
                backend.emit_event(EVENT, payload(i))
            single = time.perf_counter() - started
            started = time.perf_counter()
            for lo in range(0, events, opts.batch):
                backend.emit_many([(EVENT, payload(i)) for i in range(lo, min(events, lo + opts.batch))])
            batch = time.perf_counter() - started
        finally:
            backend.close()
        raw = [f"{settings.prefix}.raw.{i}" for i in range(len(ACTORS))]
        baseline.declare(settings, raw)
        wait_each = baseline.publish_wait_each(settings, raw, messages)
        pipelined = baseline.publish_pipelined(settings, raw, messages, batch=opts.batch * len(ACTORS))
    table.add("emit_event, one call per event (messages/s)", messages / single, messages / wait_each,
              "publish, wait for each confirm", "msg/s")
    table.add(f"emit_many, {opts.batch} events per call (messages/s)", messages / batch, messages / pipelined,
              f"publish {opts.batch * len(ACTORS)}, then wait for their confirms", "msg/s")
    table.add("emit_event calls per second (events/s)", events / single, None, "", "ev/s")
    table.notes.append("fifoq also writes each message to the ledger (reserve numbers, insert; the confirms are recorded off the caller's path) and "
                       "validates the payload; the baseline only publishes.")
    return table
