"""9. Soak: the whole system in one process (emitter, relay with retention, three connectors, the
console) at a steady rate for a long time with a short retention; resident memory, the messages
kept and the overview's p95 sampled every minute must level off once retention starts removing.

`python -m bench soak --minutes 30 --soak-rate 50 --retention 300` is the documented run (50
events/s to 3 actors, 5-minute retention); --quick is a 2-minute smoke run.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from admin.rabbitmq_api import RabbitAPI
from backend.app import Backend
from bench.common import Options, Table, bench_settings, percentile
from bench.console import console_client
from connectors.registry import Registry
from connectors.runtime import Runtime

ACTORS = ("payment", "notification", "inventory")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(opts: Options) -> Table:
    minutes = 2.0 if opts.quick else opts.soak_minutes
    rate = 20.0 if opts.quick else opts.soak_rate
    retention = 60.0 if opts.quick else opts.soak_retention
    sample_every = 20.0 if opts.quick else 60.0
    table = Table(f"9. Soak: {rate:g} events/s to {len(ACTORS)} actors for {minutes:g} min, retention {retention:g} s, "
                  f"sampled every {sample_every:g} s")
    with bench_settings("soak", opts, retention=retention) as settings:
        backend = Backend(settings)
        stop = threading.Event()
        runtime = None
        try:
            reg = Registry()
            for actor in ACTORS:
                backend.subscriptions.subscribe(actor, "bench.soak")
                reg.register(actor, lambda _m: None)
            backend.declare()
            backend.start_relay()  # and retention, every minute
            runtime = Runtime(settings, backend.ledger, reg).start()
            client = console_client(backend, RabbitAPI.from_settings(settings))
            assert backend.store is not None  # the benchmark's own embedded database, sampled below
            emitted = [0]

            def emit() -> None:
                next_at = time.monotonic()
                while not stop.is_set():
                    backend.emit_event("bench.soak", {"n": emitted[0], "note": "x" * 200})
                    emitted[0] += 1
                    next_at += 1.0 / rate
                    stop.wait(max(0.0, next_at - time.monotonic()))

            emitter = threading.Thread(target=emit, name="soak-emitter", daemon=True)
            emitter.start()
            samples: list[tuple[float, float, int, float]] = []  # (minute, RSS MiB, messages kept, overview p95 ms)
            started = time.monotonic()
            while time.monotonic() - started < minutes * 60:
                time.sleep(sample_every)
                times = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    client.get("/api/overview")
                    times.append(time.perf_counter() - t0)
                kept = backend.store.col("messages").count_documents({})
                samples.append(((time.monotonic() - started) / 60, rss_mib(), kept, percentile(times, 95) * 1000))
                print(f"  soak {samples[-1][0]:5.1f} min: RSS {samples[-1][1]:6.0f} MiB, {kept:7,} messages kept, "
                      f"overview p95 {samples[-1][3]:6.1f} ms, {emitted[0]:,} events emitted", flush=True)
            stop.set()
            emitter.join(10)
            # Level: the last sample against the first one taken after one retention period.
            settled = next((s for s in samples if s[0] * 60 >= retention + 60), samples[len(samples) // 2])
            last = samples[-1]
            table.add("resident memory at the end (MiB)", last[1], settled[1], f"at {settled[0]:.1f} min", "MiB",
                      higher_is_better=False)
            table.add("messages kept in the ledger at the end", last[2], settled[2], f"at {settled[0]:.1f} min", "messages",
                      higher_is_better=False)
            table.add("overview p95 at the end (ms)", last[3], settled[3], f"at {settled[0]:.1f} min", "ms",
                      higher_is_better=False)
            table.notes.append("curve (minute: RSS MiB / messages kept / overview p95 ms): " + "; ".join(
                f"{m:.1f}: {r:.0f} / {k:,} / {p:.1f}" for m, r, k, p in samples))
            table.notes.append(f"{emitted[0]:,} events ({emitted[0] * len(ACTORS):,} messages) emitted and processed "
                               "in the same process as the console; retention runs every minute beside the relay.")
        finally:
            stop.set()
            if runtime is not None:
                runtime.stop()
            backend.close()
    return table
