"""The consumers `python -m bench compare` puts side by side, behind one small interface.

Each contender has a producer (in the benchmark's process, with the tool's ordinary API) and one
consumer of one queue whose handler only records the call (bench.calls):

- fifoq: one `connectors.runtime.Runtime` with default settings, on the embedded ledger, in the
  benchmark's process (the embedded ledger lives in that process), and `Backend.emit_many` in a
  producer process of its own (bench.fifoq_producer) that reaches the ledger served from here;
- raw pika: a publisher with confirms and a consumer thread that acks each message (bench.baseline);
- dramatiq and celery: their producer API here, their worker started with their own command line
  (bench.workers), with the settings a row names.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import ledger_server
from backend.app import Backend
from backend.settings import Settings
from bench import baseline
from bench.calls import CallLog
from bench.workers import ROOT, WorkerProcess
from connectors.registry import Registry
from connectors.runtime import Runtime

log = logging.getLogger(__name__)

EVENT = "bench.compare"
ACTOR = "cmp"
BATCH = 100  # messages per publish call where the API takes batches (fifoq, raw pika)


@dataclass(frozen=True)
class Setting:
    """What a table row says about a contender."""

    key: str  # short, unique, part of queue names
    tool: str
    how: str  # the settings, as the tool's docs name them
    queue: str  # "quorum" or "classic"
    fifo: bool  # keeps order by design with these settings


class Contender(ABC):
    def __init__(self, setting: Setting, calls_dir: Path) -> None:
        self.setting = setting
        self.calls_dir = calls_dir
        self.log = CallLog(calls_dir)

    @abstractmethod
    def publish(self, numbers: Sequence[int]) -> None:
        """Publish these message numbers, in this order, with the tool's producer API."""

    @abstractmethod
    def start(self) -> None:
        """Start consuming."""

    def alive(self) -> bool:
        return True

    @abstractmethod
    def stop(self) -> None:
        """Ask the consumer to stop (it may still be shutting down: see join)."""

    def join(self) -> None:  # noqa: B027 - most contenders stop at once: nothing to wait for
        """Wait until the consumer has stopped."""

    def close(self) -> None:
        """Release the producer's resources."""
        self.log.close()

    def diagnostics(self) -> str:
        return ""


class Fifoq(Contender):
    """fifoq's connector in a thread of this process, on the embedded ledger that lives here. Its
    producer: `Backend.emit_many` here, or with `producer_process`, a process of its own
    (bench.fifoq_producer) that reaches the ledger through backend.ledger_server."""

    def __init__(self, setting: Setting, calls_dir: Path, settings: Settings, *, producer_process: bool = False) -> None:
        super().__init__(setting, calls_dir)
        self.settings = settings
        self.backend = Backend(settings)
        self.backend.subscriptions.subscribe(ACTOR, EVENT)
        self.backend.declare()
        self.registry = Registry()
        self.registry.register(ACTOR, lambda message: self.log(message.payload["i"]))
        self.runtime: Runtime | None = None
        self.server: ledger_server.LedgerServer | None = None
        self.producer: subprocess.Popen[str] | None = None
        if producer_process:
            try:
                self._start_producer()
            except BaseException:
                self.close()
                raise

    def _start_producer(self) -> None:
        self.server, url = ledger_server.serve(self.backend.ledger)
        env = dict(os.environ, MONGODB_URL=url, FIFOQ_PREFIX=self.settings.prefix,
                   FIFOQ_QUEUE_TYPE=self.settings.queue_type.value, AMQP_URL=self.settings.amqp_urls[0],
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        self._producer_log = open(self.calls_dir / "producer.log", "wb")  # noqa: SIM115 - closed in close()
        self.producer = subprocess.Popen([sys.executable, "-m", "bench.fifoq_producer"], cwd=ROOT, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._producer_log)
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.producer is not None and self.producer.stdout is not None
        line = self.producer.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"fifoq's producer process answered {line!r}, not {word!r}: "
                               f"{(self.calls_dir / 'producer.log').read_text(errors='replace')[-2000:]}")

    def publish(self, numbers: Sequence[int]) -> None:
        if self.producer is None:
            for lo in range(0, len(numbers), BATCH):
                self.backend.emit_many([(EVENT, {"i": i}) for i in numbers[lo:lo + BATCH]])
            return
        assert self.producer.stdin is not None and list(numbers) == list(range(numbers[0], numbers[0] + len(numbers)))
        self.producer.stdin.write(f"{numbers[0]} {len(numbers)}\n")
        self.producer.stdin.flush()
        self._expect("ok")

    def start(self) -> None:
        self.runtime = Runtime(self.settings, self.backend.ledger, self.registry, [ACTOR]).start()

    def stop(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()

    def close(self) -> None:
        try:
            if self.producer is not None:
                try:
                    self.producer.communicate(timeout=60)  # end of input: it closes and exits
                except subprocess.TimeoutExpired:
                    log.warning("fifoq's producer process did not exit within 60 s: killed")
                    self.producer.kill()
                    self.producer.communicate()
                finally:
                    self._producer_log.close()
            if self.server is not None:
                self.server.stop()
            self.backend.close()
            if self.backend.store is not None:
                self.backend.store.drop()
        finally:
            super().close()


class RawPika(Contender):
    """The baseline: consume + ack one by one at fifoq's prefetch, on a queue declared with the
    same arguments as fifoq's actor queues, in a thread of this process as fifoq's runtime is."""

    def __init__(self, setting: Setting, calls_dir: Path, settings: Settings) -> None:
        super().__init__(setting, calls_dir)
        self.settings = settings
        self.queue = f"{settings.prefix}.{setting.key}"
        baseline.declare(settings, [self.queue])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def publish(self, numbers: Sequence[int]) -> None:
        baseline.publish_pipelined(self.settings, [self.queue], len(numbers), batch=BATCH, first=numbers[0])

    def _consume(self, ready: threading.Event) -> None:
        try:
            baseline.consume_until(self.settings, self.queue, self.settings.prefetch,
                                   lambda body: self.log(json.loads(body)["seq"]), self._stop, ready)
        except BaseException as exc:  # noqa: BLE001 - reported by alive()/diagnostics()
            self._error = exc
            ready.set()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._consume, args=(ready,), name=f"raw-{self.setting.key}", daemon=True)
        self._thread.start()
        ready.wait(30)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def diagnostics(self) -> str:
        return f"{type(self._error).__name__}: {self._error}" if self._error else ""


def tool_module(name: str) -> Any:
    """bench.dramatiq_app or bench.celery_app, imported only when the benchmark runs: they need
    the bench extra, which the other benchmarks do without."""
    try:
        return importlib.import_module(f"bench.{name}_app")
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"{exc.name} is not installed: run `make venv` (the bench extra of pyproject.toml, in requirements-dev.lock)") from exc


class ToolWorker(Contender):
    """A contender whose worker is another tool's command line (bench.workers)."""

    module = ""

    def __init__(self, setting: Setting, calls_dir: Path, settings: Settings, worker_args: Sequence[str]) -> None:
        super().__init__(setting, calls_dir)
        self.queue = f"{settings.prefix}.{setting.key}"
        self.url = settings.amqp_urls[0]
        self.worker_args = list(worker_args)
        self.config = {"url": self.url, "queue": self.queue, "queue_type": setting.queue, "calls_dir": str(calls_dir)}
        self.worker: WorkerProcess | None = None

    def start(self) -> None:
        self.worker = WorkerProcess(self.setting.tool, self.worker_args, self.config, self.calls_dir / "worker.log")

    def alive(self) -> bool:
        return self.worker is not None and self.worker.alive()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.terminate()

    def join(self) -> None:
        if self.worker is not None:
            code = self.worker.wait()
            if code != 0:
                log.warning("%s worker exited with %s:\n%s", self.setting.tool, code, self.worker.tail())

    def diagnostics(self) -> str:
        return self.worker.tail() if self.worker is not None else ""


class Dramatiq(ToolWorker):
    def __init__(self, setting: Setting, calls_dir: Path, settings: Settings, cli: Sequence[str]) -> None:
        dramatiq_app = tool_module("dramatiq")
        super().__init__(setting, calls_dir, settings, ["dramatiq", "bench.dramatiq_app", *cli])
        self.broker, self.actor = dramatiq_app.make(self.url, self.queue)

    def publish(self, numbers: Sequence[int]) -> None:
        for i in numbers:
            self.actor.send(i)

    def close(self) -> None:
        try:
            self.broker.close()
        finally:
            super().close()


class Celery(ToolWorker):
    def __init__(self, setting: Setting, calls_dir: Path, settings: Settings, cli: Sequence[str]) -> None:
        celery_app = tool_module("celery")
        # A node name of its own: two workers on one host must not share celery's default one.
        args = ["celery", "-A", "bench.celery_app", "worker", "--loglevel", "WARNING", "-n", f"{self.node(settings, setting)}@%h", *cli]
        super().__init__(setting, calls_dir, settings, args)
        self.app: Any = celery_app.make(self.url, self.queue, setting.queue)
        self.task = self.app.tasks[celery_app.TASK]

    @staticmethod
    def node(settings: Settings, setting: Setting) -> str:
        return f"{settings.prefix}.{setting.key}"

    def publish(self, numbers: Sequence[int]) -> None:
        for i in numbers:
            self.task.apply_async((i,))

    def close(self) -> None:
        try:
            self.app.close()
        finally:
            super().close()
