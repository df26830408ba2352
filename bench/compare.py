"""6. Side by side with dramatiq and celery: one ordered consumer of one queue, same broker, same run.

For each contender (bench.contenders): N messages queued, then one consumer started; when it has
handled them, N more are published while it consumes (a steady stream from one producer). The
handler is a no-op that records the call (bench.calls); rates run from the first handler call to
the last, and every run's count and order are checked and printed. The baseline is raw pika on a
queue of the same type, measured the same way in the same run. Then the backlog drain: M messages
queued behind a fifoq actor blocked by its failed head, released by a replay, against the same
backlog on a fresh queue (bench.drain). The table: bench.compare_table.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.settings import Settings
from backend.values import QueueType
from bench import baseline, calls
from bench.common import Options, Table, api, bench_settings
from bench.compare_table import Outcome, SideBySide, fill
from bench.contenders import Celery, Contender, Dramatiq, Fifoq, RawPika, Setting
from bench.drain import drain

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 120.0  # seconds until a worker's first handler call (celery boots slowly on a busy machine)
IDLE_TIMEOUT = 15.0  # seconds without a handler call before the missing messages count as lost
CELERY_DELAYED = "celery_delayed_"  # celery's native delayed delivery names (not prefixable): see sweep()


def settings_list(opts: Options, prefetch: int) -> list[Setting]:
    cpus = os.cpu_count() or 1
    fq = opts.queue_type.value
    return [
        Setting("raw-quorum", "raw pika", f"consume + ack one by one, prefetch {prefetch}", "quorum", True),
        Setting("raw-classic", "raw pika", f"consume + ack one by one, prefetch {prefetch}", "classic", True),
        Setting("fifoq", "fifoq", "1 connector (`Runtime`), default settings, embedded ledger", fq, True),
        *([Setting("fifoq-classic", "fifoq", "1 connector (`Runtime`), `FIFOQ_QUEUE_TYPE=classic`, embedded ledger",
                   "classic", True)] if fq != "classic" else []),
        Setting("dramatiq-1x1", "dramatiq", "`--processes 1 --threads 1`", "classic", True),
        Setting("dramatiq-default", "dramatiq", f"defaults: {cpus} processes x 8 threads", "classic", False),
        Setting("celery-solo-classic", "celery", "`--pool solo`", "classic", True),
        Setting("celery-solo-quorum", "celery", "`--pool solo`, `task_default_queue_type=\"quorum\"`", "quorum", True),
        Setting("celery-default", "celery", f"defaults: prefork pool, concurrency {cpus}", "classic", False),
    ]


def make(setting: Setting, calls_dir: Path, settings: Settings) -> Contender:
    qtype = QueueType(setting.queue)
    if setting.tool == "raw pika":
        return RawPika(setting, calls_dir, settings.with_(queue_type=qtype))
    if setting.tool == "fifoq":
        # Each fifoq row has queues and a ledger of its own (an actor's queue type is fixed on
        # first sight): names under the run's prefix, which the sweep removes.
        own = setting.key.removeprefix("fifoq").replace("-", "_")
        return Fifoq(setting, calls_dir, settings.with_(queue_type=qtype, mongodb_db=f"{settings.mongodb_db}_main{own}",
                                                        prefix=settings.prefix + own.replace("_", "-")[:9]),
                     producer_process=True)
    if setting.tool == "dramatiq":
        cli = ["--processes", "1", "--threads", "1"] if setting.fifo else []
        return Dramatiq(setting, calls_dir, settings, cli)
    cli = ["--pool", "solo"] if setting.fifo else []
    return Celery(setting, calls_dir, settings, cli)


@dataclass
class Run:
    """One contender's run; its outcome is read once its consumer has fully stopped (finish), so
    that a call made while shutting down still counts in the check."""

    setting: Setting
    n: int
    calls_dir: Path
    contender: Contender | None = None
    trouble: str = ""
    stream_started: int = 0
    stream_ended: int = 0
    outcome: Outcome | None = None

    def finish(self) -> Outcome:
        if self.outcome is not None:
            return self.outcome
        if self.contender is not None:
            try:
                self.contender.join()
            finally:
                self.contender.close()
        n, out = self.n, Outcome(self.setting, trouble=self.trouble)
        records = calls.read(self.calls_dir)
        out.check = calls.check([number for number, _ns in records], range(2 * n))
        first_half = [r for r in records if r[0] < n]
        second_half = [r for r in records if r[0] >= n]
        out.backlog = calls.rate(first_half)
        if self.stream_ended:
            out.stream = calls.rate(second_half)
            out.published = n / max(1e-9, (self.stream_ended - self.stream_started) / 1e9)
            if second_half:
                out.lag = (second_half[-1][1] - self.stream_ended) / 1e9
        self.outcome = out
        return out


def measure(setting: Setting, n: int, settings: Settings, work: Path, settle: Callable[[], None]) -> Run:
    """Backlog of n, then n more published while consuming; see the module docstring. `settle`
    waits for the previous contenders' workers to be gone: it runs once the backlog is queued,
    before this consumer starts (their shutdown overlaps the filling, never the measure)."""
    run = Run(setting, n, work / setting.key)
    run.calls_dir.mkdir()
    try:
        contender = run.contender = make(setting, run.calls_dir, settings)
        contender.publish(range(n))
        settle()
        contender.start()
        got = calls.wait_for(run.calls_dir, n, first=STARTUP_TIMEOUT, idle=IDLE_TIMEOUT, alive=contender.alive)
        if got >= n:
            run.stream_started = time.monotonic_ns()
            contender.publish(range(n, 2 * n))
            run.stream_ended = time.monotonic_ns()
            calls.wait_for(run.calls_dir, 2 * n, first=IDLE_TIMEOUT, idle=IDLE_TIMEOUT, alive=contender.alive)
        else:
            run.trouble = f"{got} of the {n} queued messages handled, then nothing for {IDLE_TIMEOUT:.0f} s"
    except Exception as exc:
        log.exception("compare: %s failed", setting.key)
        run.trouble = f"{type(exc).__name__}: {exc}"
    finally:
        if run.contender is not None:
            if run.trouble or not run.contender.alive():
                diag = run.contender.diagnostics()
                if diag:
                    log.warning("compare: %s:\n%s", setting.key, diag)
            run.contender.stop()
    return run


def broker_names(settings: Settings) -> set[tuple[str, str]]:
    return {(kind, item["name"]) for kind in ("queues", "exchanges") for item in api(settings, kind, columns="name")}


def sweep(settings: Settings, before: set[tuple[str, str]]) -> None:
    """Delete what this run created: every name carrying its prefix (dramatiq's .DQ/.XQ queues,
    celery's reply.<prefix>... exchange), and celery's native delayed-delivery queues and
    exchanges when they did not exist before the run (a celery worker on quorum queues declares
    them under fixed names; if they were there before, they belong to someone else)."""
    mine = [(kind, name) for kind, name in broker_names(settings) - before
            if settings.prefix in name or name.startswith(CELERY_DELAYED)]
    queues = [name for kind, name in mine if kind == "queues"]
    exchanges = [name for kind, name in mine if kind == "exchanges"]
    if queues or exchanges:
        baseline.delete(settings, queues, exchanges)


def run(opts: Options) -> Table:
    n, m = opts.messages, opts.backlog
    table: SideBySide
    with bench_settings("compare", opts) as settings:
        settings_ = settings_list(opts, settings.prefetch)
        table = SideBySide(f"6. Side by side with dramatiq and celery: one consumer of one queue, no-op handler, "
                           f"{n:,} queued then {n:,} published while consuming; a {m:,}-message backlog behind a "
                           f"blocked fifoq actor")
        before = broker_names(settings)
        work = Path(tempfile.mkdtemp(prefix="fifoq-bench-compare-"))
        runs: list[Run] = []

        def settle() -> None:
            for r in runs:
                r.finish()

        def settle_unless_quick() -> None:
            if not opts.quick:  # quick mode: numbers are not meaningful, shutdowns overlap the next runs
                settle()

        try:
            for setting in settings_:
                runs.append(measure(setting, n, settings, work, settle_unless_quick))
            settle()
            blocked = drain(settings, m, work, blocked=True, startup=STARTUP_TIMEOUT, idle=IDLE_TIMEOUT)
            fresh = drain(settings, m, work, blocked=False, startup=STARTUP_TIMEOUT, idle=IDLE_TIMEOUT)
        finally:
            try:
                settle()
            finally:
                shutil.rmtree(work, ignore_errors=True)
                sweep(settings, before)
        outcomes = {r.setting.key: r.finish() for r in runs}
    fill(table, outcomes, blocked, fresh, n, m, settings.prefetch)
    return table
