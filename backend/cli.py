"""Operator command line, the console's actions for scripts and terminals.

    python -m backend status                         # every actor: state, blocked on, counts
    python -m backend show MESSAGE_ID                # one message as JSON
    python -m backend pause ACTOR --reason "..."     # --by defaults to $FIFOQ_OPERATOR or the login name
    python -m backend resume ACTOR
    python -m backend edit MESSAGE_ID --file fixed.json   (or --file - for stdin)
    python -m backend replay MESSAGE_ID
    python -m backend cancel MESSAGE_ID --reason "..."
    python -m backend relay [--once]                 # publish what the broker did not confirm
    python -m backend ledger-server [--socket PATH | --port N]   # share the embedded ledger (this user only)

Errors print one line on stderr and exit non-zero (2: bad input, 1: system unavailable).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import threading
from typing import Any, Sequence

from backend.app import Backend
from backend.errors import ConfigError, FifoqError, ValidationError
from backend.ledger import run_state
from backend.logs import configure
from backend.settings import Settings


def _default_user() -> str:
    try:
        return os.environ.get("FIFOQ_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="Operate fifoq actors and messages.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="list actors with their state")
    show = sub.add_parser("show", help="print one message")
    show.add_argument("message_id")
    for name in ("pause", "resume"):
        sp = sub.add_parser(name, help=f"{name} an actor")
        sp.add_argument("actor")
        sp.add_argument("--by", default=_default_user())
        if name == "pause":
            sp.add_argument("--reason", required=True)
    edit = sub.add_parser("edit", help="replace a failed or waiting message's payload")
    edit.add_argument("message_id")
    edit.add_argument("--file", required=True, help="JSON file with the new payload, '-' for stdin")
    edit.add_argument("--version", type=int, default=None, help="refuse if the message is not at this version")
    edit.add_argument("--by", default=_default_user())
    replay = sub.add_parser("replay", help="run a failed message again")
    replay.add_argument("message_id")
    replay.add_argument("--by", default=_default_user())
    cancel = sub.add_parser("cancel", help="never process a message (kept as a tombstone)")
    cancel.add_argument("message_id")
    cancel.add_argument("--reason", required=True)
    cancel.add_argument("--by", default=_default_user())
    relay = sub.add_parser("relay", help="publish pending messages")
    relay.add_argument("--once", action="store_true")
    relay.add_argument("--interval", type=float, default=1.0)
    srv = sub.add_parser("ledger-server", help="serve the embedded ledger to this user's other processes (development)")
    srv.add_argument("--socket", default=None, help="Unix socket (default: ledger.sock in $XDG_RUNTIME_DIR/fifoq "
                                                    "or /tmp/fifoq-UID, a directory private to this user)")
    srv.add_argument("--port", type=int, default=None, help="listen on TCP instead, with a key file written at each start")
    srv.add_argument("--host", default="127.0.0.1", help="with --port: a loopback address unless --allow-remote")
    srv.add_argument("--key-file", default=None, help="with --port: where to write the key (default: ledger-PORT.key "
                                                      "beside the default socket)")
    srv.add_argument("--allow-remote", action="store_true", help="with --port: accept a non-loopback --host")
    return p


def _read_payload(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.command == "ledger-server":
        return _ledger_server(settings, args)
    be = Backend(settings)
    ops, ledger = be.operations, be.ledger
    try:
        if args.command == "status":
            counts = ledger.status_counts()
            for a in ledger.actors():
                state = run_state(a).value
                extra = f" blocked on {a['blocked']['message_id']} ({a['blocked']['error']['type']})" if a.get("blocked") else ""
                extra += f" paused by {a['paused']['by']}: {a['paused']['reason']}" if a.get("paused") else ""
                c = ", ".join(f"{k}={v}" for k, v in sorted(counts.get(a["_id"], {}).items()))
                print(f"{a['_id']:<20} {state:<8} {c}{extra}")
        elif args.command == "show":
            print(_json(ledger.message(args.message_id)))
        elif args.command == "pause":
            print(_json(ops.pause(args.actor, args.by, args.reason).get("paused")))
        elif args.command == "resume":
            ops.resume(args.actor, args.by)
            print(f"{args.actor} resumed")
        elif args.command == "edit":
            doc = ops.edit(args.message_id, _read_payload(args.file), args.by, args.version)
            print(f"{args.message_id} now at version {doc.get('version', 1)}")
        elif args.command == "replay":
            ops.replay(args.message_id, args.by)
            print(f"{args.message_id} replay requested")
        elif args.command == "cancel":
            ops.cancel(args.message_id, args.by, args.reason)
            print(f"{args.message_id} cancelled")
        elif args.command == "relay":
            if args.once:
                print(f"published {_relay_once(be)}")
            else:
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                from backend.relay import Relay

                try:
                    Relay(settings, ledger).run_forever(stop, args.interval)
                except KeyboardInterrupt:
                    pass
    finally:
        be.close()
    return 0


def _relay_once(be: Backend) -> int:
    from backend.relay import Relay

    relay = Relay(be.settings, be.ledger)
    try:
        return relay.run_once()
    finally:
        relay.close()


def _ledger_server(settings: Settings, args: argparse.Namespace) -> int:
    from backend import ledger_server

    if settings.mongodb_url and not settings.mongodb_url.startswith("mongomock://"):
        raise ValidationError("ledger-server serves the embedded store: unset MONGODB_URL")
    if args.port is None and (args.key_file or args.allow_remote):
        raise ValidationError("--key-file and --allow-remote go with --port (a Unix socket needs no key)")
    if args.port is not None and args.socket:
        raise ValidationError("--socket and --port exclude each other")
    socket_path = None if args.port is not None else (args.socket or ledger_server.default_socket())
    be = Backend(settings)
    server, url = ledger_server.serve(be.ledger, args.host, args.port, be.audit, socket_path=socket_path,
                                      key_file=args.key_file, allow_remote=args.allow_remote)
    key = f" and {ledger_server.KEY_FILE_ENV}={server.key_file}" if server.key is not None else ""
    print(f"embedded ledger at {url}: start other processes of this user with MONGODB_URL={url}{key}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(os.environ.get("LOG_LEVEL", "WARNING"))
    try:
        return run(args)
    except (ValidationError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FifoqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.http_status < 500 else 1
