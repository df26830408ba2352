"""`fifoq`, the console script of the project: the operator commands of backend.cli at the top
level, the other packages' command groups below it, each imported only when used.

    fifoq status | show | pause | resume | edit | replay | cancel | relay | ledger-server
    fifoq connectors run ACTOR...      (python -m connectors run ACTOR...)
    fifoq admin serve | create-user | provision
    fifoq demo [run | emit]

This package sits on top of the others: it is the only one that names them all.
"""
from __future__ import annotations

from collections.abc import Sequence

import click

from backend import cli as operator_cli
from backend.commandline import Group, run

SUBGROUPS = {"connectors": "connectors.cli:cli", "admin": "admin.cli:cli", "demo": "demo.cli:cli"}


@click.group(cls=Group, name="fifoq", log_level="WARNING", lazy=SUBGROUPS,
             commands=dict(operator_cli.cli.commands))
@click.version_option(package_name="fifoq", message="%(prog)s %(version)s")
def cli() -> None:
    """fifoq: blocking FIFO actor queues on RabbitMQ, with a ledger and an admin console."""


def main(argv: Sequence[str] | None = None) -> int:
    return run(cli, argv, prog_name="fifoq")
