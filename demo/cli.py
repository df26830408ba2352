"""Command line of the demo.

    fifoq demo                  # everything in one process: backend, connectors, console
    fifoq demo --duration 60    # ... and stop by itself after 60 s
    fifoq demo emit             # only the event player, against MONGODB_URL and the broker

`python -m demo ...` is the same. Settings come from the environment (see README.md); a bad
setting ends with one line and exit 2 (backend.commandline).
"""
from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from backend.app import Backend
from backend.commandline import PORT, Group, Seconds, check_port
from backend.commandline import run as run_cli
from backend.errors import BrokerUnavailable, ConfigError, ValidationError
from backend.metrics import PipelineMetrics, instrument_emitter
from backend.settings import EnvSettings, Settings, redact_url, setting
from connectors.metrics import WorkerCollector, serve
from demo.scenarios import ACTORS, DEFAULT_RATE, Player, declare

log = logging.getLogger(__name__)

DEFAULT_ADMIN_PASSWORD = "fifoq-demo"
DEMO_USERS = (("operator", "operator-demo", "operator"), ("viewer", "viewer-demo", "viewer"))
SHUTDOWN_TIMEOUT_SECONDS = 10.0


class DemoSettings(EnvSettings):
    admin_password: str = setting("DEMO_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD, secret=True)


@dataclass(frozen=True)
class PlayOptions:
    duration: float | None
    rate: float
    seed: int | None
    count: int | None


def play_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `run` and `emit` share."""
    for option in reversed([
        click.option("--duration", type=Seconds(min=0, max=365 * 86400, min_open=True), default=None, metavar="SECONDS",
                     help="stop after this many seconds"),
        click.option("--rate", type=Seconds(min=0, max=100_000), default=DEFAULT_RATE, metavar="EVENTS_PER_S",
                     show_default=True, help="events per second (0: as fast as possible)"),
        click.option("--seed", type=click.IntRange(0, 2**63), default=None, help="random seed: the same seed plays the same events"),
        click.option("--count", type=click.IntRange(0, 10**9), default=None, metavar="N",
                     help="emit N events, then keep serving"),
    ]):
        command = option(command)
    return command


@click.group(cls=Group, name="demo", default="run")
def cli() -> None:
    """fifoq demo: tour bookings, orders, a chat, one bad payment."""


@cli.command("run")
@play_options
def run_command(duration: float | None, rate: float, seed: int | None, count: int | None) -> int:
    """Backend, connectors and admin console in one process (the default)."""
    return run(PlayOptions(duration, rate, seed, count))


@cli.command("emit")
@play_options
@click.option("--metrics-port", type=PORT, default=None, metavar="PORT",
              help="serve Prometheus /metrics (fifoq_messages_emitted_total) on this port "
                   "(`python -m demo` puts them on the console's /metrics)")
@click.option("--metrics-addr", default="127.0.0.1", metavar="ADDR", show_default=True,
              help="address for --metrics-port")
def emit_command(duration: float | None, rate: float, seed: int | None, count: int | None,
                 metrics_port: int | None, metrics_addr: str) -> int:
    """Only the event player, against MONGODB_URL and the broker."""
    return emit(PlayOptions(duration, rate, seed, count), metrics_port, metrics_addr)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(cli, argv, prog_name="python -m demo")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping the demo", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _wait(stop: threading.Event, duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.wait(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))):
        if deadline is not None and time.monotonic() >= deadline:
            log.info("--duration reached")
            return


def _describe(settings: Settings) -> None:
    log.info("broker: %s (management API %s), prefix %r", ", ".join(redact_url(u) for u in settings.amqp_urls),
             settings.api_url, settings.prefix)
    if settings.mongodb_url:
        log.info("ledger: MongoDB %s, database %r", redact_url(settings.mongodb_url), settings.mongodb_db)
    else:
        log.info("ledger: embedded in-process store (mongomock): data is lost when the demo stops")


def _check_broker(settings: Settings) -> None:
    """Fail fast with one line when RabbitMQ does not answer (the connectors would only retry)."""
    from backend.broker import connect

    conn = connect(settings, "fifoq-demo-check")  # raises BrokerUnavailable
    conn.close()


def reset_queues(settings: Settings, actors: Sequence[str]) -> None:
    """Delete the demo actors' queues left by a previous run on an embedded ledger.

    Their envelopes point at messages of a ledger that ended with that run; a connector would wait
    for them forever. A queue some other process consumes is never deleted: that is someone
    else's system, and the demo refuses to start on its prefix. (Quorum queues do not support
    queue.delete's if-unused flag, hence the passive declare that reads the consumer count.)
    """
    from backend.broker import connect

    conn = connect(settings, "fifoq-demo-reset")
    pika_channel_log = logging.getLogger("pika.channel")
    level = pika_channel_log.level
    pika_channel_log.setLevel(logging.ERROR)  # a missing queue is expected here, not a warning
    try:
        for actor in actors:
            queue = settings.queue_name(actor)
            ch = conn.channel()
            try:
                consumers = ch.queue_declare(queue, passive=True).method.consumer_count
            except Exception as exc:
                if getattr(exc, "reply_code", None) == 404:
                    continue
                raise BrokerUnavailable(f"checking {queue}: {exc}") from exc
            if consumers:
                raise ConfigError(
                    f"queue {queue} has {consumers} consumer(s) from another process: the demo does not touch it; "
                    f"set FIFOQ_PREFIX to a prefix of your own"
                )
            try:
                ch.queue_delete(queue)
                ch.close()
            except Exception as exc:
                raise BrokerUnavailable(f"deleting {queue}: {exc}") from exc
            log.info("actor=%s removed queue %s left by an earlier run (its ledger ended with it)", actor, queue)
    finally:
        pika_channel_log.setLevel(level)
        if conn.is_open:
            conn.close()


def _create_users(users: Any) -> list[tuple[str, str, str]]:
    """The demo logins: (name, password, role). Existing users (real MongoDB) are left unchanged."""
    from admin.users import Role

    admin_password = DemoSettings.from_env().admin_password
    wanted = [("admin", admin_password, Role.ADMIN.value)] + list(DEMO_USERS)
    out = []
    for name, password, role in wanted:
        if users.get(name) is not None:
            log.warning("user %s exists already: password and role unchanged", name)
            out.append((name, "(unchanged)", role))
            continue
        try:
            users.create(name, password, role)
        except ValidationError as exc:
            raise ConfigError(f"DEMO_ADMIN_PASSWORD: {exc}") from None
        out.append((name, password, role))
    return out


def run(args: PlayOptions) -> int:
    """Backend, relay, connectors, player and console in this process, until Ctrl-C or --duration."""
    from werkzeug.serving import make_server

    from admin import create_app
    from admin.config import AdminConfig
    from admin.server import start_background
    from connectors.examples import registry
    from connectors.runtime import Runtime

    settings = Settings.from_env()
    throwaway = secrets.token_hex(32)  # sessions end with the demo
    cfg = AdminConfig.from_env(defaults={"ADMIN_ENV": "development", "ADMIN_SECRET_KEY": throwaway})
    if cfg.env == "production" and cfg.secret_key == throwaway:
        raise ConfigError("ADMIN_SECRET_KEY is required with ADMIN_ENV=production")
    admin_env = {"ADMIN_ENV": cfg.env, "ADMIN_SECRET_KEY": cfg.secret_key}
    check_port(cfg.host, cfg.port, "ADMIN_PORT")
    _describe(settings)
    _check_broker(settings)
    backend = Backend(settings)
    if backend.store is not None and backend.store.embedded:
        reset_queues(settings, ACTORS)
    declare(backend.subscriptions)
    backend.declare()
    app = create_app(backend, config=admin_env)
    logins = _create_users(app.extensions["fifoq_users"])
    try:
        server = make_server(cfg.host, cfg.port, app, threaded=True)
    except (OSError, SystemExit) as exc:
        backend.close()
        raise ConfigError(f"the console cannot listen on {cfg.host}:{cfg.port}: {exc} (set ADMIN_PORT)") from None
    url = f"http://{cfg.host}:{cfg.port}"

    # The pipeline's counters go on the console's /metrics, beside the console's own gauges.
    metrics = PipelineMetrics(registry=app.extensions["fifoq_metrics"])
    instrument_emitter(backend.emitter, metrics)

    def on_event(kind: str, actor: str, doc: dict[str, Any], seconds: float) -> None:
        metrics.on_event(kind, actor, doc, seconds)
        if kind == "failed":
            print(f"\n>>> {actor} is blocked on message {doc['_id']} ({doc.get('event')}): "
                  f"fix it at {url}/messages/{doc['_id']}\n", flush=True)

    stop = threading.Event()
    _stop_on_signals(stop)
    backend.start_relay()
    runtime = Runtime(settings, backend.ledger, registry, list(ACTORS), on_event=on_event)
    metrics.registry.register(WorkerCollector(runtime))
    runtime.start()
    player = Player(backend, seed=args.seed, rate=args.rate, count=args.count)
    player.start()
    # Werkzeug's server in a thread: the console must share this process's in-memory ledger.
    server_thread = threading.Thread(target=server.serve_forever, name="admin-console", daemon=True)
    server_thread.start()
    console_jobs = start_background(app)
    _banner(url, logins, settings, cfg.host)
    try:
        _wait(stop, args.duration)
    finally:
        log.info("stopping: player, connectors, relay, console")
        player.stop(SHUTDOWN_TIMEOUT_SECONDS)
        runtime.stop()
        console_jobs.set()
        server.shutdown()
        backend.close()
    log.info("demo stopped after %d events", player.emitted)
    return 0


def _banner(url: str, logins: list[tuple[str, str, str]], settings: Settings, host: str) -> None:
    lines = [
        "",
        "fifoq demo is running",
        f"  admin console   {url}",
    ]
    lines += [f"  login           {name} / {password}   ({role})" for name, password, role in logins]
    lines += [
        f"  broker          {', '.join(redact_url(u) for u in settings.amqp_urls)}  (prefix {settings.prefix})",
        f"  ledger          {'MongoDB ' + redact_url(settings.mongodb_url) if settings.mongodb_url else 'embedded (in process)'}",
        "  A booking in an unsupported currency blocks the payment actor within a few seconds:",
        "  open the console, edit its currency to \"EUR\", replay, and watch payment drain in order.",
        "  Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the console listens on %s with published demo passwords: keep it off untrusted networks", host)


def emit(args: PlayOptions, metrics_port: int | None = None, metrics_addr: str = "127.0.0.1") -> int:
    """Only the player (plus the relay), for a backend-demo process next to separate connectors."""
    settings = Settings.from_env()
    if not settings.mongodb_url.startswith(("mongodb://", "mongodb+srv://", "embedded://")):
        raise ConfigError(
            "`python -m demo emit` needs MONGODB_URL shared with the connectors and the console (mongodb://..., "
            "or embedded://... from `python -m backend ledger-server`); "
            "`python -m demo` runs everything in one process on the embedded ledger"
        )
    _describe(settings)
    backend = Backend(settings)
    if metrics_port is not None:
        metrics = PipelineMetrics()
        instrument_emitter(backend.emitter, metrics)
        try:
            serve(metrics.registry, metrics_port, metrics_addr)
        except OSError as exc:
            backend.close()
            raise ConfigError(f"cannot serve metrics on {metrics_addr}:{metrics_port}: {exc}") from None
    declare(backend.subscriptions)
    backend.declare()
    backend.start_relay()
    stop = threading.Event()
    _stop_on_signals(stop)
    player = Player(backend, seed=args.seed, rate=args.rate, count=args.count)
    player.start()
    log.info("emitting demo events at %g/s (Ctrl-C to stop)", args.rate)
    try:
        _wait(stop, args.duration)
    finally:
        player.stop(SHUTDOWN_TIMEOUT_SECONDS)
        backend.close()
    log.info("emitted %d events", player.emitted)
    return 0
