"""Command line of the console: `fifoq admin create-user NAME --role admin`, `fifoq admin serve`,
`fifoq admin provision ACTOR...` (least-privilege RabbitMQ users, see admin.provision) and
`fifoq admin notify` (webhooks on block and unblock, see admin.notifier).
`python -m admin ...` is the same; exit codes and errors follow backend.commandline."""
from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from admin.users import Role, UserStore
from backend.commandline import PORT, Group, check_port, run
from backend.errors import ConfigError, ValidationError
from backend.settings import Settings
from backend.store import Store

log = logging.getLogger(__name__)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise ValidationError("the two passwords differ")
    return first


@click.group(cls=Group, name="admin")
def cli() -> None:
    """The fifoq admin console."""


@cli.command("create-user")
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.VIEWER.value, show_default=True)
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@click.option("--allow-embedded", is_flag=True, hidden=True)
def create_user(name: str, role: str, password_stdin: bool, allow_embedded: bool) -> None:
    """Create a console user (in MongoDB: MONGODB_URL)."""
    settings = Settings.from_env()
    if settings.mongodb_url.startswith("embedded://"):
        raise ConfigError(
            "MONGODB_URL=embedded://... keeps console users inside the console's process: start it with "
            "ADMIN_BOOTSTRAP_USER/ADMIN_BOOTSTRAP_PASSWORD instead"
        )
    store = Store.open(settings)
    if store.embedded and not allow_embedded:
        raise ConfigError(
            "MONGODB_URL is not set: a user created in the embedded store vanishes when this command exits "
            "(set MONGODB_URL, or start the console with ADMIN_BOOTSTRAP_USER/ADMIN_BOOTSTRAP_PASSWORD)"
        )
    user = UserStore(store).create(name, read_password(password_stdin), role)
    click.echo(f"created user {user.name} with role {user.role.value}")


@cli.command()
@click.option("--host", default=None, help="address to listen on (default: ADMIN_HOST, 127.0.0.1)")
@click.option("--port", type=PORT, default=None, help="port (default: ADMIN_PORT, 5000)")
@click.option("--dev", is_flag=True, help="Werkzeug's development server instead of gunicorn (one process; "
                                          "for development only)")
def serve(host: str | None, port: int | None, dev: bool) -> int:
    """Run the console under gunicorn (ADMIN_HOST/ADMIN_PORT, default 127.0.0.1:5000; ADMIN_WORKERS,
    ADMIN_THREADS... see admin.server)."""
    from admin import server

    return server.run(host=host, port=port, dev=dev)


@cli.command()
@click.argument("actors", nargs=-1, metavar="[ACTOR[:LANES]]...")
@click.option("--vhost", default=None, help="virtual host (default: FIFOQ_VHOST, 'fifoq')")
@click.option("--from-ledger", is_flag=True, help="also every actor registered in the ledger")
@click.option("--rotate", multiple=True, metavar="USER",
              help="give USER a new generated password ('all' for every user); repeatable")
@click.option("--guest", type=click.Choice(["restrict", "delete", "keep"]), default="restrict", show_default=True,
              help="restrict: guest loses its tags and every permission (only those on the vhost when guest runs "
                   "the provisioning); delete: delete guest; keep: leave it")
def provision(actors: tuple[str, ...], vhost: str | None, from_ledger: bool, rotate: tuple[str, ...], guest: str) -> None:
    """Create the vhost, least-privilege broker users, permissions, policy and queues (idempotent).

    Through the management API as an administrator (RABBITMQ_API_URL/USER/PASSWORD). Passwords
    come from PROVISION_<COMPONENT>_PASSWORD or are generated and printed once.
    """
    from admin import provision as prov
    from admin.rabbitmq_api import RabbitAdminAPI

    settings = Settings.from_env()
    ledger_actors: list[Any] = []
    if from_ledger:
        from backend.app import open_ledger

        ledger_actors = open_ledger(settings).actors()
    plans = prov.actors_from(actors, settings, ledger_actors)
    api = RabbitAdminAPI(settings.api_url, settings.api_user, settings.api_password, verify=settings.api_verify)
    result = prov.provision(api, settings, plans, vhost=vhost or settings.vhost, rotate=list(rotate), guest=guest)
    # Passwords go to stdout once, for the operator to store; never to the log.
    for line in prov.report(result, settings):
        click.echo(line)


@cli.command()
@click.option("--once", is_flag=True, help="one round (note the blocks, send what is due), then exit")
@click.option("--allow-unconfigured", is_flag=True,
              help="without any receiver configured, stay up and send nothing instead of exiting with an error "
                   "(a compose service switched on by setting the variables)")
@click.option("--metrics-port", type=PORT, default=None, help="serve Prometheus metrics on this port (off by default)")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, help="address for --metrics-port")
def notify(once: bool, allow_unconfigured: bool, metrics_port: int | None, metrics_addr: str) -> None:
    """Send signed webhooks when actors block and unblock (one per deployment; a second one waits
    as a standby). Settings: ADMIN_NOTIFY_URL, ADMIN_NOTIFY_SECRET and per actor
    ADMIN_NOTIFY_URL_<ACTOR>, ADMIN_NOTIFY_SECRET_<ACTOR> (docs/operations.md)."""
    import os
    import signal
    import threading

    from admin.notifier import Notifier, NotifierCollector
    from admin.notify_settings import NotifySettings
    from backend.app import open_ledger

    settings = Settings.from_env()
    targets = NotifySettings.from_env(os.environ)
    if not targets.configured and not allow_unconfigured:
        raise ConfigError("nothing to notify: set ADMIN_NOTIFY_URL and ADMIN_NOTIFY_SECRET, or ADMIN_NOTIFY_URL_<ACTOR>")
    if settings.mongodb_url.startswith("embedded://"):
        # development: the served embedded ledger has no room for the notifier's own state
        log.warning("MONGODB_URL=embedded://...: the notifier's state lives in this process only (a restart "
                    "announces current blocks again)")
        store = Store.open(settings.with_(mongodb_url=f"mongomock://fifoq-notifier-{settings.prefix}"))
    else:
        store = Store.open(settings)
        if store.embedded:
            raise ConfigError("set MONGODB_URL: the notifier reads the ledger the connectors write and keeps its state next to it")
    notifier = Notifier(open_ledger(settings), store, targets)
    if once:
        click.echo(f"sent {notifier.tick() if targets.configured else 0} notification(s); {notifier.pending()} owed")
        return
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        check_port(metrics_addr, metrics_port, "--metrics-port")
        registry = CollectorRegistry()
        registry.register(NotifierCollector(notifier))
        start_http_server(metrics_port, addr=metrics_addr, registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if not targets.configured:
        # Noting blocks now would mark them "nothing to send" for good: wait for a configuration.
        log.warning("no webhook receiver configured (ADMIN_NOTIFY_URL, ADMIN_NOTIFY_URL_<ACTOR>): sending nothing")
        stop.wait()
        return
    notifier.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    return run(cli, argv, prog_name="python -m admin")
