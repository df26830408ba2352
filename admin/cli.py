"""Command line: `python -m admin create-user NAME --role admin`, `python -m admin serve` and
`python -m admin provision ACTOR...` (least-privilege RabbitMQ users, see admin.provision)."""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from typing import Sequence, TextIO

from admin.accounts import bootstrap_admin  # noqa: F401  (python -m admin's first admin, kept importable here)
from admin.users import Role, UserStore
from backend.errors import ConfigError, FifoqError
from backend.settings import Settings
from backend.store import Store

log = logging.getLogger(__name__)


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        return stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise ValueError("the two passwords differ")
    return first


def create_user(args: argparse.Namespace, stdin: TextIO) -> int:
    settings = Settings.from_env()
    if settings.mongodb_url.startswith("embedded://"):
        raise ConfigError(
            "MONGODB_URL=embedded://... keeps console users inside the console's process: start it with "
            "ADMIN_BOOTSTRAP_USER/ADMIN_BOOTSTRAP_PASSWORD instead"
        )
    store = Store.open(settings)
    if store.embedded and not args.allow_embedded:
        raise ConfigError(
            "MONGODB_URL is not set: a user created in the embedded store vanishes when this command exits "
            "(set MONGODB_URL, or start the console with ADMIN_BOOTSTRAP_USER/ADMIN_BOOTSTRAP_PASSWORD)"
        )
    password = _read_password(args.password_stdin, stdin)
    user = UserStore(store).create(args.name, password, args.role)
    print(f"created user {user.name} with role {user.role.value}")
    return 0


def serve(args: argparse.Namespace, stdin: TextIO) -> int:
    from admin import server

    return server.run(host=args.host, port=args.port, dev=args.dev)


def provision(args: argparse.Namespace, stdin: TextIO) -> int:
    """Least-privilege vhost, users, permissions, policy and topology (see admin.provision)."""
    from admin import provision as prov
    from admin.rabbitmq_api import RabbitAdminAPI

    settings = Settings.from_env()
    ledger_actors: list = []
    if args.from_ledger:
        from backend.app import open_ledger

        ledger_actors = open_ledger(settings).actors()
    actors = prov.actors_from(args.actors, settings, ledger_actors)
    api = RabbitAdminAPI(settings.api_url, settings.api_user, settings.api_password, verify=settings.api_verify)
    vhost = args.vhost or os.environ.get("FIFOQ_VHOST", "").strip() or prov.DEFAULT_VHOST
    result = prov.provision(api, settings, actors, vhost=vhost, rotate=args.rotate, guest=args.guest)
    # Passwords go to stdout once, for the operator to store; never to the log.
    for line in prov.report(result, settings):
        print(line)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m admin", description="fifoq admin console")
    sub = p.add_subparsers(dest="command", required=True)
    cu = sub.add_parser("create-user", help="create a console user")
    cu.add_argument("name")
    cu.add_argument("--role", default=Role.VIEWER.value, choices=[r.value for r in Role])
    cu.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    cu.add_argument("--allow-embedded", action="store_true", help=argparse.SUPPRESS)
    cu.set_defaults(func=create_user)
    sv = sub.add_parser("serve", help="run the console under gunicorn (ADMIN_HOST/ADMIN_PORT, default 127.0.0.1:5000)")
    sv.add_argument("--host", default=None)
    sv.add_argument("--port", type=int, default=None)
    sv.add_argument("--dev", action="store_true",
                    help="Werkzeug's development server instead (one process; for development only)")
    sv.set_defaults(func=serve)
    pv = sub.add_parser(
        "provision",
        help="create the vhost, least-privilege broker users, permissions, policy and queues (idempotent)",
        description="Through the management API as an administrator (RABBITMQ_API_URL/USER/PASSWORD). "
                    "Passwords come from PROVISION_<COMPONENT>_PASSWORD or are generated and printed once.",
    )
    pv.add_argument("actors", nargs="*", metavar="ACTOR[:LANES]", help="actors to create a queue and a connector user for")
    pv.add_argument("--vhost", default=None, help="virtual host (default: FIFOQ_VHOST or 'fifoq')")
    pv.add_argument("--from-ledger", action="store_true", help="also every actor registered in the ledger")
    pv.add_argument("--rotate", action="append", default=[], metavar="USER",
                    help="give USER a new generated password ('all' for every user); repeatable")
    pv.add_argument("--guest", default="restrict", choices=["restrict", "delete", "keep"],
                    help="restrict (default): guest loses its tags and every permission (only those on the vhost "
                         "when guest runs the provisioning); delete: delete guest; keep: leave it")
    pv.set_defaults(func=provision)
    return p




def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return args.func(args, stdin or sys.stdin)
    except (FifoqError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
