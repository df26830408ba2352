"""One attempt at one message: call the handler, keep its claim alive, retry transient errors in
place, and tell the caller how it ended. Settling is the caller's (it may settle and claim the
next message in one round trip).

The handler runs on the lane worker's own thread: handing each message to another thread and
waiting for it cost two thread switches, about 80 us per message on a shared 2-CPU machine, a
fifth of a connector's time per message. While a handler runs longer than TEND_AFTER_SECONDS, the
process's tender thread (_Tender) serves the worker's broker connection (heartbeats, deliveries
into its buffer) and renews the claim's lease every third of its length, so a long handler neither
loses its connection nor its claim. The worker and the tender never use the connection at the
same time: the tender works under the runner's lock, and the worker takes that lock back before
it touches the connection again. A claim that is found taken over (the lease ran out while this
process was cut off from the ledger) ends the attempt as LOST: its outcome is not written, and the
message is never taken as done.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from backend import backoff
from backend.errors import FifoqError, TransientError
from backend.ledger import Ledger
from backend.settings import Settings
from backend.values import ErrorInfo, Message

log = logging.getLogger(__name__)

TEND_AFTER_SECONDS = 1.0  # a handler running longer (or a third of the lease) is tended
TEND_EVERY_SECONDS = 0.25  # how often the tender looks (heartbeats: 30 s; a lease: 1 s at the least)


class Ended(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # the claim was taken over: nothing is written
    STOPPED = "stopped"  # stopping during a transient retry's wait: given back


@dataclass(frozen=True)
class Result:
    ended: Ended
    doc: dict[str, Any]  # the message as held at the end (its `attempts` is the current fence)
    error: ErrorInfo | None = None
    seconds: float = 0.0


def error_info(exc: BaseException) -> ErrorInfo:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type(exc).__name__, str(exc)[:2000], tb[-20000:])


class AttemptRunner:
    """Runs attempts for one lane worker, on its thread."""

    def __init__(self, settings: Settings, ledger: Ledger, owner: str, actor: str,
                 handler: Callable[[Message], None], pump: Callable[[float], None]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.owner = owner
        self.actor = actor
        self.handler = handler
        self.pump = pump  # serves the broker connection for up to N seconds (or sleeps)
        self._renewed = 0.0
        self.lost = False
        # (handler start, claimed doc) while a handler runs on the worker's thread; the tender
        # looks at it, and works for this runner, under _duty only.
        self._running: tuple[float, dict[str, Any]] | None = None
        self._duty = threading.Lock()
        TENDER.watch(self)

    def close(self) -> None:
        TENDER.forget(self)

    def run(self, doc: dict[str, Any], stop: threading.Event, on_retry: Callable[[dict[str, Any], float], None]) -> Result:
        """Call the handler on the claimed `doc`, with transient retries in place."""
        retries = self.settings.transient_retries
        retry = 0
        while True:
            started = time.monotonic()
            self.lost = False
            exc = self._call(doc)
            seconds = time.monotonic() - started
            if self.lost:
                return Result(Ended.LOST, doc, None, seconds)
            if exc is None:
                return Result(Ended.SUCCEEDED, doc, None, seconds)
            err = error_info(exc)
            if not isinstance(exc, TransientError) or retry >= retries:
                return Result(Ended.FAILED, doc, err, seconds)
            if stop.is_set():
                self.ledger.note_attempt(doc, self.owner, "transient", err)
                return Result(Ended.STOPPED, doc, err, seconds)
            delay = backoff.transient(self.settings).delay(retry)
            retry += 1
            on_retry(doc, seconds)
            self.ledger.note_attempt(doc, self.owner, "transient", err)
            log.warning("actor=%s message=%s transient error (%s), retry %d/%d in %.1fs", self.actor, doc["_id"], exc,
                        retry, retries, delay)
            self._wait(delay, stop, doc)
            if self.lost:
                return Result(Ended.LOST, doc, None, seconds)
            again = self.ledger.restart_attempt(doc, self.owner)
            if again is None:
                return Result(Ended.LOST, doc, None, seconds)
            doc = again

    def renew(self, doc: dict[str, Any], force: bool = False) -> None:
        """Keep the claim alive (a third of the lease apart). Marks the attempt lost when the
        ledger says it is not ours any more."""
        now = time.monotonic()
        if not force and now - self._renewed < self.settings.claim_lease / 3:
            return
        self._renewed = now
        try:
            if not self.ledger.renew(doc["_id"], self.owner, int(doc["attempts"]), self.settings.claim_lease):
                if not self.lost:
                    log.error("actor=%s message=%s our claim was taken over (lease expired while cut off?): "
                              "its outcome will not be written", self.actor, doc["_id"])
                self.lost = True
        except FifoqError as exc:  # the ledger is down: the handler goes on, its outcome is written after
            log.warning("actor=%s message=%s lease not renewed: %s", self.actor, doc["_id"], exc)

    def _call(self, doc: dict[str, Any]) -> BaseException | None:
        try:
            message = Message.from_doc(doc)
        except Exception as exc:  # noqa: BLE001 - a message we cannot even read fails like a handler
            return exc
        self._renewed = started = time.monotonic()
        self._running = (started, doc)
        try:
            self.handler(message)  # the caller's correlation id is on the handler's log lines too
            return None
        except BaseException as exc:  # noqa: BLE001 - the handler's exception is the attempt's outcome
            return exc
        finally:
            with self._duty:  # the tender is done with the connection before we use it again
                self._running = None

    def tend(self) -> None:
        """On the tender's thread: serve the connection and renew the claim of a handler that has
        been running for TEND_AFTER_SECONDS (or a third of the lease) or more."""
        running = self._running
        if running is None or time.monotonic() - running[0] < min(TEND_AFTER_SECONDS, self.settings.claim_lease / 3):
            return
        with self._duty:
            if self._running is not running:
                return  # the handler returned meanwhile: the connection is the worker's again
            self.renew(running[1])
            self.pump(0)

    def _wait(self, seconds: float, stop: threading.Event, doc: dict[str, Any]) -> None:
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end:
            self.renew(doc)
            self.pump(min(0.1, max(0.0, end - time.monotonic())))


class _Tender:
    """One daemon thread per process that tends the runners whose handler runs long (see the
    module docstring); it looks every TEND_EVERY_SECONDS and costs nothing per message."""

    def __init__(self) -> None:
        self._runners: weakref.WeakSet[AttemptRunner] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, runner: AttemptRunner) -> None:
        with self._lock:
            self._runners.add(runner)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fifoq-tender", daemon=True)
                self._thread.start()

    def forget(self, runner: AttemptRunner) -> None:
        with self._lock:
            self._runners.discard(runner)

    def _run(self) -> None:
        while True:
            time.sleep(TEND_EVERY_SECONDS)
            with self._lock:
                runners = list(self._runners)
            for runner in runners:
                try:
                    runner.tend()
                except Exception as exc:  # noqa: BLE001 - one runner's trouble must not stop the others' heartbeats
                    log.warning("actor=%s could not tend a long handler: %s", runner.actor, exc)


TENDER = _Tender()
