"""Command line: run connectors for some actors.

    fifoq connectors run payment notification            # serve until Ctrl-C / SIGTERM
    fifoq connectors run payment --drain                  # process what is queued, then exit
    fifoq connectors run payment --module myapp.handlers  # handlers from your own module
    fifoq connectors run --metrics-port 9101              # Prometheus metrics on :9101/metrics

`python -m connectors ...` is the same. A handler module exposes `registry` (a
connectors.Registry) with one handler per actor. Exit codes: see backend.commandline (3: --drain
gave up after --timeout).
"""
from __future__ import annotations

import importlib
import logging
import signal
from collections.abc import Sequence

import click

from backend.app import open_ledger
from backend.commandline import PORT, UNAVAILABLE, Group, Seconds, run
from backend.errors import ConfigError
from backend.metrics import PipelineMetrics
from backend.settings import Settings
from backend.subscriptions import validate_actor_name
from connectors.metrics import WorkerCollector, serve
from connectors.registry import Registry
from connectors.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_MODULE = "connectors.examples"
TIMED_OUT = 3

module_option = click.option("--module", default=DEFAULT_MODULE, show_default=True,
                             help="module exposing `registry` (a connectors.Registry)")


def load_registry(module_name: str) -> Registry:
    """The `registry` of a handler module. Raises ConfigError when there is none."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import handler module {module_name!r}: {exc}") from None
    registry = getattr(module, "registry", None)
    if not isinstance(registry, Registry):
        raise ConfigError(f"module {module_name!r} has no `registry` (a connectors.Registry)")
    return registry


@click.group(cls=Group, name="connectors")
def cli() -> None:
    """Run fifoq connectors."""


@cli.command("list")
@module_option
def list_actors(module: str) -> None:
    """List the actors the handler module serves."""
    click.echo("\n".join(load_registry(module).actors))


@cli.command("run")
@click.argument("actors", nargs=-1)
@module_option
@click.option("--drain", is_flag=True, help="process until the queues are empty or blocked, then exit")
@click.option("--timeout", type=Seconds(min=0, max=365 * 86400, min_open=True), default=None,
              help="with --drain: give up after this many seconds (exit code 3)")
@click.option("--metrics-port", type=PORT, default=None,
              help="serve Prometheus metrics on this port (GET /metrics); off by default")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True,
              help="address for --metrics-port (0.0.0.0 to let a remote Prometheus scrape)")
def run_command(actors: tuple[str, ...], module: str, drain: bool, timeout: float | None,
                metrics_port: int | None, metrics_addr: str) -> int:
    """Consume the queues of the given actors (default: every actor of the handler module) and
    call their handlers in order."""
    registry = load_registry(module)
    for actor in actors:
        validate_actor_name(actor)
        registry.get(actor)
    settings = Settings.from_env()
    ledger = open_ledger(settings)
    metrics = PipelineMetrics() if metrics_port is not None else None
    runtime = Runtime(settings, ledger, registry, list(actors) or None,
                      on_event=metrics.on_event if metrics else None)
    if metrics is not None and metrics_port is not None:
        metrics.registry.register(WorkerCollector(runtime))
        try:
            serve(metrics.registry, metrics_port, metrics_addr)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {metrics_addr}:{metrics_port}: {exc.strerror or exc}") from None

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current message", signum)
        runtime.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("serving actors %s as %s", ", ".join(runtime.actors), runtime.owner)
    try:
        stats = runtime.run(drain=drain, timeout=timeout)
    except TimeoutError as exc:
        click.echo(f"error: {exc}", err=True)
        return TIMED_OUT
    for actor, st in stats.items():
        log.info("actor=%s processed=%d skipped=%d failed=%d retried=%d errors=%d", actor, st.processed, st.skipped,
                 st.failed, st.retried, st.errors)
    broken = sorted(a for a, st in stats.items() if st.errors)
    if broken:
        # Every error is logged with its traceback and recorded on the lane (the console shows it).
        click.echo(f"error: unexpected errors in the worker of {', '.join(broken)} (see the log)", err=True)
        return UNAVAILABLE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(cli, argv, prog_name="python -m connectors")
