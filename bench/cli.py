"""Command line of the benchmarks: choose which to run, their size, the queue type, profiling."""
from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import click

from backend import logs
from backend.commandline import CONTEXT, Seconds, run
from backend.values import QueueType
from bench import compare, connector, console, emit, growth, latency, ledger_cost, queues, soak
from bench.common import Options, Table, api, base_settings
from bench.profiling import ThreadsProfile

BENCHMARKS: dict[str, Callable[[Options], Table]] = {
    "emit": emit.run,
    "connector": connector.run,
    "latency": latency.run,
    "queues": queues.run,
    "console": console.run,
    "compare": compare.run,
    "growth": growth.run,
    "ledger": ledger_cost.run,
    "soak": soak.run,
}


def machine(opts: Options) -> str:
    try:
        version = api(base_settings(opts), "overview", columns="rabbitmq_version")["rabbitmq_version"]
    except Exception as exc:  # noqa: BLE001 - informative only
        version = f"unknown ({type(exc).__name__})"
    return (f"machine: {os.cpu_count()} CPU(s), {platform.platform()}, Python {platform.python_version()}, "
            f"RabbitMQ {version}, queue type {opts.queue_type.value}, ledger: embedded (mongomock)")


@click.command(name="bench", context_settings=CONTEXT)
@click.argument("which", nargs=-1, metavar="[BENCH]...")
@click.option("--quick", is_flag=True, help="tiny sizes: a smoke run, numbers not meaningful")
@click.option("--messages", type=click.IntRange(1, 10**7), help="messages per throughput measure (default 5000; quick 200)")
@click.option("--actors", type=click.IntRange(1, 10**7), help="actors for the queues and console benchmarks (default 1000)")
@click.option("--rate", type=Seconds(min=0, max=100_000, min_open=True), help="messages/s for the latency benchmark (default 200)")
@click.option("--latency-messages", type=click.IntRange(1, 10**7), help="messages for the latency benchmark (default 1000)")
@click.option("--requests", type=click.IntRange(1, 10**7), help="requests per console endpoint (default 20)")
@click.option("--backlog", type=click.IntRange(1, 10**7),
              help="messages behind a blocked actor in the compare benchmark (default 20000; quick: --messages)")
@click.option("--queue-type", type=click.Choice([q.value for q in QueueType]), default=QueueType.QUORUM.value,
              show_default=True)
@click.option("--ledger-latency", type=Seconds(min=0, max=1000), default=2.0, show_default=True, metavar="MS",
              help="milliseconds added to every ledger operation by the ledger benchmark")
@click.option("--minutes", type=Seconds(min=0.5, max=24 * 60), default=30.0, show_default=True,
              help="length of the soak benchmark")
@click.option("--soak-rate", type=Seconds(min=0, max=10_000, min_open=True), default=50.0, show_default=True,
              help="events/s of the soak benchmark")
@click.option("--retention", type=Seconds(min=60, max=86_400), default=300.0, show_default=True,
              help="FIFOQ_RETENTION (seconds) of the soak benchmark")
@click.option("--profile", metavar="FILE",
              help="write a cProfile of the run, its threads included (open with pstats or snakeviz)")
def cli(which: tuple[str, ...], quick: bool, messages: int | None, actors: int | None, rate: float | None,
        latency_messages: int | None, requests: int | None, backlog: int | None, queue_type: str, ledger_latency: float,
        minutes: float, soak_rate: float, retention: float, profile: str | None) -> int:
    """Run the benchmarks (default: all but soak): emit, connector, latency, queues, console, growth, ledger,
    compare; and soak (long: run it by name)."""
    unknown = [w for w in which if w not in BENCHMARKS]
    if unknown:
        raise click.UsageError(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    logs.configure("WARNING")
    logging.getLogger("pika").setLevel(logging.ERROR)

    qtype = QueueType(queue_type)
    opts = Options.quick_mode(queue_type=qtype) if quick else Options(queue_type=qtype)
    changes: dict[str, Any] = {k: v for k, v in (("messages", messages), ("actors", actors), ("rate", rate),
                                  ("latency_messages", latency_messages), ("requests", requests),
                                  ("backlog", backlog)) if v}
    if quick and messages and not latency_messages:
        changes["latency_messages"] = min(messages, 200)
    if quick and messages and not backlog:
        changes["backlog"] = messages
    opts = replace(opts, ledger_latency_ms=ledger_latency, soak_minutes=minutes, soak_rate=soak_rate,
                   soak_retention=retention, **changes)
    return run_benchmarks(opts, list(which) or [b for b in BENCHMARKS if b != "soak"], profile)


def run_benchmarks(opts: Options, names: list[str], profile: str | None) -> int:
    print(machine(opts))
    print(f"options: {opts}\n", flush=True)
    profiler = ThreadsProfile() if profile else None
    failed = 0
    for name in names:
        started = time.perf_counter()
        try:
            if profiler:
                profiler.enable()
            table = BENCHMARKS[name](opts)
        except Exception as exc:
            failed += 1
            print(f"### {name}: FAILED: {type(exc).__name__}: {exc}\n", flush=True)
            logging.getLogger("bench").exception("benchmark %s failed", name)
            continue
        finally:
            if profiler:
                profiler.disable()
        print(table.render(), flush=True)
        print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
        if table.problems:
            failed += 1
            print(f"### {name}: FAILED: {len(table.problems)} problem(s) listed above\n", flush=True)
    if profiler and profile:
        stats = profiler.dump(profile)
        stats.stream = sys.stderr  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(25)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(cli, argv, prog_name="python -m bench")
