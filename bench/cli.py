"""Command line of the benchmarks: choose which to run, their size, the queue type, profiling."""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import replace
from typing import Callable, Sequence

from backend.values import QueueType
from bench import compare, connector, console, emit, latency, queues
from bench.common import Options, Table, api, base_settings
from bench.profiling import ThreadsProfile


BENCHMARKS: dict[str, Callable[[Options], Table]] = {
    "emit": emit.run,
    "connector": connector.run,
    "latency": latency.run,
    "queues": queues.run,
    "console": console.run,
    "compare": compare.run,
}


def machine(opts: Options) -> str:
    try:
        version = api(base_settings(opts), "overview", columns="rabbitmq_version")["rabbitmq_version"]
    except Exception as exc:  # noqa: BLE001 - informative only
        version = f"unknown ({type(exc).__name__})"
    return (f"machine: {os.cpu_count()} CPU(s), {platform.platform()}, Python {platform.python_version()}, "
            f"RabbitMQ {version}, queue type {opts.queue_type.value}, ledger: embedded (mongomock)")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("which", nargs="*", metavar="BENCH",
                        help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers not meaningful")
    parser.add_argument("--messages", type=positive, help="messages per throughput measure (default 5000; quick 200)")
    parser.add_argument("--actors", type=positive, help="actors for the queues and console benchmarks (default 1000)")
    parser.add_argument("--rate", type=float, help="messages/s for the latency benchmark (default 200)")
    parser.add_argument("--latency-messages", type=positive, help="messages for the latency benchmark (default 1000)")
    parser.add_argument("--requests", type=positive, help="requests per console endpoint (default 20)")
    parser.add_argument("--backlog", type=positive,
                        help="messages behind a blocked actor in the compare benchmark (default 20000; quick: --messages)")
    parser.add_argument("--queue-type", choices=[q.value for q in QueueType], default=QueueType.QUORUM.value)
    parser.add_argument("--profile", metavar="FILE",
                        help="write a cProfile of the run, its threads included (open with pstats or snakeviz)")
    args = parser.parse_args(argv)
    unknown = [w for w in args.which if w not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.ERROR)

    qtype = QueueType(args.queue_type)
    opts = Options.quick_mode(queue_type=qtype) if args.quick else Options(queue_type=qtype)
    changes = {k: v for k, v in (("messages", args.messages), ("actors", args.actors), ("rate", args.rate),
                                  ("latency_messages", args.latency_messages), ("requests", args.requests),
                                  ("backlog", args.backlog)) if v}
    if args.quick and args.messages and not args.latency_messages:
        changes["latency_messages"] = min(args.messages, 200)
    if args.quick and args.messages and not args.backlog:
        changes["backlog"] = args.messages
    opts = replace(opts, **changes)
    print(machine(opts))
    print(f"options: {opts}\n", flush=True)
    profiler = ThreadsProfile() if args.profile else None
    failed = 0
    for name in args.which or list(BENCHMARKS):
        started = time.perf_counter()
        try:
            if profiler:
                profiler.enable()
            table = BENCHMARKS[name](opts)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
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
    if profiler:
        stats = profiler.dump(args.profile)
        stats.stream = sys.stderr  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(25)
    return 1 if failed else 0
