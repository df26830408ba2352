"""One attempt at one message: call the handler, keep its claim alive, retry transient errors in
place, and tell the caller how it ended. Settling is the caller's (it may settle and claim the
next message in one round trip).

The handler runs in its own thread while the caller's thread keeps the broker connection served
(heartbeats) and renews the claim's lease every third of its length, so a long handler neither
loses its connection nor its claim. A claim that is found taken over (the lease ran out while
this process was cut off from the ledger) ends the attempt as LOST: its outcome is not written,
and the message is never taken as done.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from typing import Any

from backend import backoff
from backend.errors import FifoqError, TransientError
from backend.ledger import Ledger
from backend.settings import Settings
from backend.values import ErrorInfo, Message

log = logging.getLogger(__name__)

HANDLER_POLL_SECONDS = 0.05  # how often a long handler lets the connection send heartbeats


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
    """Runs attempts for one lane worker (one handler thread, reused)."""

    def __init__(self, settings: Settings, ledger: Ledger, owner: str, actor: str,
                 handler: Callable[[Message], None], pump: Callable[[float], None]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.owner = owner
        self.actor = actor
        self.handler = handler
        self.pump = pump  # serves the broker connection for up to N seconds (or sleeps)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"handler-{actor}")
        self._renewed = 0.0
        self.lost = False

    def close(self) -> None:
        self._executor.shutdown(wait=True)

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
        self._renewed = time.monotonic()
        # The handler's own log lines carry the message's correlation id too.
        future: Future[None] = self._executor.submit(contextvars.copy_context().run, self.handler, message)
        while True:
            self.renew(doc)
            try:
                future.result(timeout=HANDLER_POLL_SECONDS)
                break
            except FutureTimeout:
                pass
            except BaseException:  # noqa: BLE001 - the handler's exception, returned below
                break
            self.pump(0)
        return future.exception()

    def _wait(self, seconds: float, stop: threading.Event, doc: dict[str, Any]) -> None:
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end:
            self.renew(doc)
            self.pump(min(0.1, max(0.0, end - time.monotonic())))
