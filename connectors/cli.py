"""Command line: run connectors for some actors.

    python -m connectors run payment notification            # serve until Ctrl-C / SIGTERM
    python -m connectors run payment --drain                  # process what is queued, then exit
    python -m connectors run payment --module myapp.handlers  # handlers from your own module
    python -m connectors run --metrics-port 9101              # Prometheus metrics on :9101/metrics

A handler module exposes `registry` (a connectors.Registry) with one handler per actor.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Sequence

from backend.app import open_ledger
from backend.errors import FifoqError
from backend.logs import configure
from backend.metrics import PipelineMetrics
from backend.settings import Settings
from backend.subscriptions import validate_actor_name
from connectors.metrics import WorkerCollector, serve
from connectors.registry import Registry
from connectors.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_MODULE = "connectors.examples"


def load_registry(module_name: str) -> Registry:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import handler module {module_name!r}: {exc}") from None
    registry = getattr(module, "registry", None)
    if not isinstance(registry, Registry):
        raise SystemExit(f"error: module {module_name!r} has no `registry` (a connectors.Registry)")
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors", description="Run fifoq connectors.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume the queues of the given actors and call their handlers in order")
    run.add_argument("actors", nargs="*", help="actor names (default: every actor of the handler module)")
    run.add_argument("--module", default=DEFAULT_MODULE, help=f"module exposing `registry` (default {DEFAULT_MODULE})")
    run.add_argument("--drain", action="store_true", help="process until the queues are empty or blocked, then exit")
    run.add_argument("--timeout", type=float, default=None, help="with --drain: give up after this many seconds")
    run.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus metrics on this port (GET /metrics); off by default")
    run.add_argument("--metrics-addr", default="127.0.0.1",
                     help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 to let a remote Prometheus scrape)")
    sub.add_parser("list", help="list the actors the handler module serves").add_argument("--module", default=DEFAULT_MODULE)
    args = parser.parse_args(argv)
    configure()
    registry = load_registry(args.module)
    if args.command == "list":
        print("\n".join(registry.actors))
        return 0
    try:
        for actor in args.actors:
            validate_actor_name(actor)
            registry.get(actor)
        settings = Settings.from_env()
        ledger = open_ledger(settings)
        metrics = PipelineMetrics() if args.metrics_port is not None else None
        runtime = Runtime(settings, ledger, registry, list(args.actors) or None,
                          on_event=metrics.on_event if metrics else None)
    except FifoqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if metrics is not None:
        metrics.registry.register(WorkerCollector(runtime))
        try:
            serve(metrics.registry, args.metrics_port, args.metrics_addr)
        except OSError as exc:
            print(f"error: cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {exc}", file=sys.stderr)
            return 2

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current message", signum)
        runtime.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("serving actors %s as %s", ", ".join(runtime.actors), runtime.owner)
    try:
        stats = runtime.run(drain=args.drain, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    for actor, st in stats.items():
        log.info("actor=%s processed=%d skipped=%d failed=%d retried=%d", actor, st.processed, st.skipped, st.failed, st.retried)
    return 0
