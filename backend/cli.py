"""Operator command line, the console's actions for scripts and terminals.

    fifoq status                         # every actor: state, blocked on, counts
    fifoq show MESSAGE_ID                # one message as JSON
    fifoq pause ACTOR --reason "..."     # --by defaults to $FIFOQ_OPERATOR or the login name
    fifoq resume ACTOR
    fifoq edit MESSAGE_ID --file fixed.json   (or --file - for stdin)
    fifoq replay MESSAGE_ID
    fifoq cancel MESSAGE_ID --reason "..."
    fifoq relay [--once]                 # publish what the broker did not confirm (and apply retention)
    fifoq sweep [--older-than SECONDS]   # remove settled messages past FIFOQ_RETENTION, once
    fifoq archive --out FILE.jsonl       # ... exporting them to JSON lines first
    fifoq reindex-search [--actor NAME] [--batch N]   # search terms for messages stored before them
    fifoq ledger-server [--socket PATH | --port N]   # share the embedded ledger (this user only)

`python -m backend ...` is the same. Errors print one line on stderr and exit non-zero (2: bad
input, 1: system unavailable); see backend.commandline.
"""
from __future__ import annotations

import functools
import getpass
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import click

from backend.app import Backend
from backend.commandline import PORT_OR_ANY, Group, Seconds, run
from backend.errors import ValidationError
from backend.ledger import run_state
from backend.ledger_search import REINDEX_BATCH
from backend.settings import Settings

READ_FACTOR = 4  # a payload file may be this many times FIFOQ_MAX_PAYLOAD_BYTES (indentation, escapes)
MAX_REINDEX_BATCH = 10_000  # ids per read of reindex-search


def default_operator(settings: Settings) -> str:
    try:
        return settings.operator or getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def read_payload(path: str, max_bytes: int) -> Any:
    """The JSON document of a file ('-': stdin). Raises ValidationError with one clear line."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise ValidationError(f"{path} is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValidationError(f"{path} is nested too deeply") from None
    except ValueError:  # Python refuses to convert integers this long (a denial-of-service guard)
        raise ValidationError(f"{path} has an integer of more than {sys.get_int_max_str_digits()} digits") from None


class _Session:
    """The settings and, opened on first use, the backend of one command."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = Backend(self.settings)
        return self._backend

    def who(self, by: str | None) -> str:
        """The operator recorded in the audit log: --by, else FIFOQ_OPERATOR, else the login name."""
        return by or default_operator(self.settings)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def pass_session(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command a _Session as first argument and close it afterwards."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = _Session()
        try:
            return command(session, *args, **kwargs)
        finally:
            session.close()

    return wrapper


by_option = click.option("--by", default=None, help="operator name recorded in the audit log "
                                                    "(default: FIFOQ_OPERATOR or the login name)")


@click.group(cls=Group, name="fifoq", log_level="WARNING")
def cli() -> None:
    """Operate fifoq actors and messages."""


@cli.command()
@pass_session
def status(session: _Session) -> None:
    """List actors with their state."""
    ledger = session.backend.ledger
    counts = ledger.status_counts()
    for a in ledger.actors():
        state = run_state(a).value
        extra = f" blocked on {a['blocked']['message_id']} ({a['blocked']['error']['type']})" if a.get("blocked") else ""
        extra += f" paused by {a['paused']['by']}: {a['paused']['reason']}" if a.get("paused") else ""
        c = ", ".join(f"{k}={v}" for k, v in sorted(counts.get(a["_id"], {}).items()))
        click.echo(f"{a['_id']:<20} {state:<8} {c}{extra}")


@cli.command()
@click.argument("message_id")
@pass_session
def show(session: _Session, message_id: str) -> None:
    """Print one message as JSON."""
    click.echo(_json(session.backend.ledger.message(message_id)))


@cli.command()
@click.argument("actor")
@click.option("--reason", required=True, help="why (shown on the console and in the audit log)")
@by_option
@pass_session
def pause(session: _Session, actor: str, reason: str, by: str | None) -> None:
    """Pause an actor: its connector stops after the current message."""
    doc = session.backend.operations.pause(actor, session.who(by), reason)
    click.echo(_json(doc.get("paused")))


@cli.command()
@click.argument("actor")
@by_option
@pass_session
def resume(session: _Session, actor: str, by: str | None) -> None:
    """Resume a paused actor."""
    session.backend.operations.resume(actor, session.who(by))
    click.echo(f"{actor} resumed")


@cli.command()
@click.argument("message_id")
@click.option("--file", "path", required=True, help="JSON file with the new payload, '-' for stdin")
@click.option("--version", type=click.IntRange(1, 2**31), default=None,
              help="refuse if the message is not at this version")
@by_option
@pass_session
def edit(session: _Session, message_id: str, path: str, version: int | None, by: str | None) -> None:
    """Replace a failed or waiting message's payload."""
    payload = read_payload(path, READ_FACTOR * session.settings.max_payload_bytes)
    doc = session.backend.operations.edit(message_id, payload, session.who(by), version)
    click.echo(f"{message_id} now at version {doc.get('version', 1)}")


@cli.command()
@click.argument("message_id")
@by_option
@pass_session
def replay(session: _Session, message_id: str, by: str | None) -> None:
    """Run a failed message again."""
    session.backend.operations.replay(message_id, session.who(by))
    click.echo(f"{message_id} replay requested")


@cli.command()
@click.argument("message_id")
@click.option("--reason", required=True, help="why (kept with the tombstone)")
@by_option
@pass_session
def cancel(session: _Session, message_id: str, reason: str, by: str | None) -> None:
    """Never process a message (kept as a tombstone)."""
    session.backend.operations.cancel(message_id, session.who(by), reason)
    click.echo(f"{message_id} cancelled")


@cli.command()
@click.option("--once", is_flag=True, help="one pass, then exit")
@click.option("--interval", type=Seconds(0.05, 3600), default=1.0, show_default=True,
              help="seconds between passes")
@pass_session
def relay(session: _Session, once: bool, interval: float) -> None:
    """Publish pending messages the broker did not confirm."""
    from backend.relay import Relay

    be = session.backend
    relay = Relay(be.settings, be.ledger)
    try:
        if once:
            click.echo(f"published {relay.run_once()}")
            return
        stop = _stop_on_signals()
        # FIFOQ_RETENTION, beside the relay, every minute (or a fifth of a shorter retention)
        _retention(session).start(stop, retention_interval(session.settings.retention))
        relay.run_forever(stop, interval)
    finally:
        relay.close()


def retention_interval(retention: float) -> float:
    from backend.retention import retention_interval as interval

    return interval(retention)


def _retention(session: _Session) -> Any:
    from backend.retention import Retention

    be = session.backend
    audit = be.store.col("audit") if be.store is not None else None
    return Retention(be.settings, be.ledger, audit)


@cli.command()
@click.option("--older-than", type=Seconds(60, 100 * 365 * 86400), default=None,
              help="seconds (default: FIFOQ_RETENTION)")
@pass_session
def sweep(session: _Session, older_than: float | None) -> None:
    """Remove settled messages older than the retention period, once (the relay does it every minute)."""
    if older_than is None and session.settings.retention == 0:
        raise ValidationError("FIFOQ_RETENTION=0 keeps everything: give --older-than to sweep anyway")
    click.echo(str(_retention(session).sweep_once(older_than=older_than)))


@cli.command()
@click.option("--out", "path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="JSON lines file to append the messages to (created 0600)")
@click.option("--older-than", type=Seconds(60, 100 * 365 * 86400), default=None,
              help="seconds (default: FIFOQ_RETENTION)")
@pass_session
def archive(session: _Session, path: str, older_than: float | None) -> None:
    """Export the settled messages the retention would remove to JSON lines, then remove them.

    Each message is written (and synced) before it is removed; an error while writing removes
    nothing more."""
    from pathlib import Path

    from backend.retention import archive_to

    if older_than is None and session.settings.retention == 0:
        raise ValidationError("FIFOQ_RETENTION=0 keeps everything: give --older-than to archive anyway")
    try:
        out = archive_to(Path(path))
    except OSError as exc:
        raise ValidationError(f"cannot write {path}: {exc.strerror or exc}") from None
    with out.out:
        report = _retention(session).sweep_once(older_than=older_than, archive=out, audit_older_than=0)
    click.echo(f"archived {out.written} message(s) to {path}; {report}")


@cli.command("reindex-search")
@click.option("--actor", default=None, help="only this actor's messages (default: every actor)")
@click.option("--batch", type=click.IntRange(1, MAX_REINDEX_BATCH), default=REINDEX_BATCH, show_default=True,
              help="message numbers read at a time (then one conditional write per message that needs it)")
@pass_session
def reindex_search(session: _Session, actor: str | None, batch: int) -> None:
    """Give messages stored before the indexed payload search their search terms.

    Until then the console's payload search does not find them. Each message is one write,
    conditional on its payload's version (an edit made meanwhile keeps its own terms): safe to
    run again, and while the connectors and the console work."""
    ledger = session.backend.ledger
    names = [ledger.actor_doc(actor)["_id"]] if actor is not None else [d["_id"] for d in ledger.actor_docs()]
    for name in names:
        done = ledger.reindex_search(name, batch)
        click.echo(f"{name}: search terms written for {done['written']} of {done['read']} message(s)")


@cli.command("ledger-server")
@click.option("--socket", "socket_path", default=None, type=click.Path(dir_okay=False),
              help="Unix socket (default: ledger.sock in $XDG_RUNTIME_DIR/fifoq or /tmp/fifoq-UID, a directory "
                   "private to this user)")
@click.option("--port", type=PORT_OR_ANY, default=None,
              help="listen on TCP instead (0: any free port), with a key file written at each start")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="with --port: a loopback address unless --allow-remote")
@click.option("--key-file", default=None, type=click.Path(dir_okay=False),
              help="with --port: where to write the key (default: ledger-PORT.key beside the default socket)")
@click.option("--allow-remote", is_flag=True, help="with --port: accept a non-loopback --host")
@pass_session
def ledger_server_command(session: _Session, socket_path: str | None, port: int | None, host: str,
                          key_file: str | None, allow_remote: bool) -> None:
    """Serve the embedded ledger to this user's other processes (development)."""
    from backend import ledger_server

    settings = session.settings
    if settings.mongodb_url and not settings.mongodb_url.startswith("mongomock://"):
        raise ValidationError("ledger-server serves the embedded store: unset MONGODB_URL")
    if port is None and (key_file or allow_remote):
        raise click.UsageError("--key-file and --allow-remote go with --port (a Unix socket needs no key)")
    if port is not None and socket_path:
        raise click.UsageError("--socket and --port exclude each other")
    where = None if port is not None else (socket_path or ledger_server.default_socket())
    be = session.backend
    server, url = ledger_server.serve(be.ledger, host, port, be.audit, socket_path=where, key_file=key_file,
                                      allow_remote=allow_remote)
    key = f" and {ledger_server.KEY_FILE_ENV}={server.key_file}" if server.key is not None else ""
    click.echo(f"embedded ledger at {url}: start other processes of this user with MONGODB_URL={url}{key}")
    try:
        _stop_on_signals().wait()
    finally:
        server.stop()


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C): long-running commands stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def main(argv: Sequence[str] | None = None) -> int:
    return run(cli, argv, prog_name="python -m backend")
