"""The convention every fifoq command line follows (click, which Flask ships).

- One command group per package (`backend.cli`, `connectors.cli`, `admin.cli`, `demo.cli`,
  `bench.cli`), gathered under the `fifoq` console script (fifoq.cli); `python -m PACKAGE` runs
  the package's group.
- Each command is thin glue: it parses its options and calls library functions.
- Logging is set up once per run by the group (backend.logs.configure: LOG_LEVEL, LOG_FORMAT).
- No traceback reaches the user. Every failure is one line on stderr, `error: ...`, and an exit
  code: 2 for bad input (arguments, settings, files, a port that is taken or out of range, a key
  the ledger server refuses), 1 when a service is unavailable or for an unexpected error (its
  traceback is logged at DEBUG level), 130 when interrupted. A command may return its own code
  (connectors' `--drain --timeout` returns 3).
"""
from __future__ import annotations

import importlib
import logging
import math
import socket
import sys
from collections.abc import Sequence
from typing import Any

import click

from backend import logs
from backend.errors import ConfigError, FifoqError

log = logging.getLogger(__name__)

BAD_INPUT = 2
UNAVAILABLE = 1
INTERRUPTED = 130
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
class Seconds(click.FloatRange):
    """A finite number in a range (click's FloatRange lets nan and inf through)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


PORT = click.IntRange(1, 65535)
PORT_OR_ANY = click.IntRange(0, 65535)  # 0: a free port chosen by the system


class Group(click.Group):
    """A command group that sets up logging before its commands run.

    Args:
        log_level: the level when LOG_LEVEL is unset (the operator commands are quiet: WARNING).
        lazy: {command name: "module:attribute"} of commands imported only when used, so that
            `fifoq status` does not import Flask, and packages stay free of upward imports.
        default: the command run when the first argument names none (`python -m demo --duration 60`).
    """

    def __init__(self, *args: Any, log_level: str = "INFO", lazy: dict[str, str] | None = None,
                 default: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)
        self.log_level = log_level
        self.lazy = dict(lazy or {})
        self.default = default

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.default and not (args and (args[0] in self.list_commands(ctx) or args[0] in ("-h", "--help"))):
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        logs.configure(self.log_level)  # a nested group (`fifoq connectors`) sets its own default level
        return super().invoke(ctx)


def run(command: click.Command, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a command line; returns its exit code after printing any failure as one line."""
    try:
        result = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=prog_name,
                              standalone_mode=False)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        return fail(exc.format_message() + where, exc.exit_code)
    except click.ClickException as exc:
        return fail(exc.format_message(), exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        return fail("interrupted", INTERRUPTED)
    except BaseException as exc:  # noqa: BLE001 - the one place that turns every failure into a line
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else fail(str(exc.code), BAD_INPUT)
        return fail(*describe(exc))
    return result if isinstance(result, int) else 0


def describe(exc: BaseException) -> tuple[str, int]:
    """(message, exit code) for a failure."""
    if isinstance(exc, ConfigError):
        return str(exc), BAD_INPUT
    if isinstance(exc, FifoqError):
        return str(exc), BAD_INPUT if exc.http_status < 500 else UNAVAILABLE
    if isinstance(exc, OSError):
        target = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{target}", BAD_INPUT
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply", BAD_INPUT
    log.debug("unexpected error", exc_info=exc)
    return f"unexpected {type(exc).__name__}: {exc} (LOG_LEVEL=DEBUG shows the traceback)", UNAVAILABLE


def fail(message: str, code: int) -> int:
    """Print `error: message` as one line on stderr; returns `code`."""
    one_line = " ".join(str(message).split())
    click.echo(f"error: {one_line}", err=True)
    return code


def check_port(host: str, port: int, what: str) -> None:
    """Fail with one line before anything starts when `host:port` cannot be listened on.

    Raises:
        ConfigError: the address is taken or not ours (`what` names the setting or option).
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot listen on {host}:{port}: {reason} (set {what})") from None
