"""The connector runtime: runs one lane worker per queue of each actor, in threads of one process.

Each worker (connectors.worker) calls its actor's handler strictly in sequence order and stops its
lane on a failure (or, for an actor with ordering keys, only the failing key). See
docs/delivery.md for the whole path and its guarantees.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from backend import backoff
from backend.errors import FifoqError, UnknownActor
from backend.ledger import Ledger
from backend.settings import Settings
from connectors.registry import Registration, Registry
from connectors.worker import LaneWorker, WorkerStats

log = logging.getLogger(__name__)

__all__ = ["LaneWorker", "Runtime", "WorkerStats"]


class ActorStates:
    """The actors' state documents (pause, declaration) for every worker of a process, read in
    one query and shared: a worker asks for a copy no older than it needs (FIFOQ_POLL_INTERVAL
    before starting a handler, FIFOQ_IDLE_POLL_INTERVAL while idle), so an idle process costs one
    ledger read per idle interval, whatever its number of actors."""

    def __init__(self, ledger: Ledger, actors: list[str]) -> None:
        self.ledger = ledger
        self.actors = list(actors)
        self._docs: dict[str, dict[str, Any]] = {}
        self._read = float("-inf")
        self._lock = threading.Lock()
        self.reads = 0

    def get(self, actor: str, max_age: float) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._read >= max_age or actor not in self._docs:
                self._docs = {d["_id"]: d for d in self.ledger.actor_docs(self.actors)}
                self._read = time.monotonic()
                self.reads += 1
            doc = self._docs.get(actor)
        if doc is None:
            raise UnknownActor(f"unknown actor {actor!r}")
        return doc


class Runtime:
    """Runs workers for several actors in one process."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        registry: Registry,
        actors: list[str] | None = None,
        *,
        owner: str | None = None,
        on_event: Callable[[str, str, dict[str, Any], float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.registry = registry
        self.actors = actors or registry.actors
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # on_event(kind, actor, message document, handler seconds), kind in done/failed/retried:
        # the hook metrics and tests use. It runs on the worker thread: keep it cheap.
        self.on_event = on_event or (lambda _kind, _actor, _doc, _seconds: None)
        self.stop_event = threading.Event()
        self.states = ActorStates(ledger, self.actors)
        self.workers: dict[str, LaneWorker] = {}
        self.threads: list[threading.Thread] = []

    def start(self, drain: bool = False) -> Runtime:
        for actor in self.actors:
            reg = self.registry.get(actor)
            try:
                doc = self.ledger.actor_doc(actor)
            except UnknownActor:
                # No backend has declared the actor yet: its lane count (fixed on first sight) and
                # queue type are the backend's to choose, so wait for the declaration rather than
                # guess them. In drain mode there is nothing to drain.
                if drain:
                    log.info("actor=%s not declared by any backend yet: nothing to drain", actor)
                    continue
                t = threading.Thread(target=self._await_declaration, args=(reg,), name=f"await-{actor}", daemon=True)
                t.start()
                self.threads.append(t)
                continue
            self._start_lanes(reg, int(doc.get("lanes", 1)), drain)
        return self

    def _start_lanes(self, reg: Registration, lanes: int, drain: bool) -> list[threading.Thread]:
        started = []
        for lane in range(lanes):
            worker = LaneWorker(self, reg, lane)
            self.workers[worker.name] = worker
            t = threading.Thread(target=worker.run, args=(self.stop_event, drain), name=f"actor-{worker.name}", daemon=True)
            t.start()
            self.threads.append(t)
            started.append(t)
        return started

    def _await_declaration(self, reg: Registration) -> None:
        log.warning("actor=%s not declared by any backend yet: waiting for its declaration", reg.actor)
        while not self.stop_event.is_set():
            try:
                doc = self.ledger.actor_doc(reg.actor)
            except UnknownActor:
                self.stop_event.wait(self.settings.poll_interval)
                continue
            except FifoqError as exc:  # the ledger is down: keep waiting
                log.warning("actor=%s cannot read its declaration yet: %s", reg.actor, exc)
                self.stop_event.wait(backoff.RECONNECT.maximum)
                continue
            log.info("actor=%s declared with %d lane(s): starting", reg.actor, int(doc.get("lanes", 1)))
            for t in self._start_lanes(reg, int(doc.get("lanes", 1)), drain=False):
                t.join()
            return

    def run(self, drain: bool = False, timeout: float | None = None) -> dict[str, WorkerStats]:
        """Serve until stop() (or, with drain=True, until every actor's queue is empty or blocked)."""
        self.start(drain=drain)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for t in self.threads:
                while t.is_alive():
                    t.join(0.2)
                    if deadline is not None and time.monotonic() > deadline:
                        self.stop()
                        raise TimeoutError(f"runtime did not finish within {timeout}s")
        except KeyboardInterrupt:
            self.stop()
        return {a: w.stats for a, w in self.workers.items()}

    def stop(self, wait: bool = True) -> None:
        self.stop_event.set()
        if wait:
            for t in self.threads:
                t.join(30)
