"""The connector runtime: calls each actor's handler strictly in sequence order, blocks on failure.

One worker thread per actor, each with its own broker connection. The broker delivers envelopes
(references); the ledger holds the truth (payload, status), so every decision is taken on the
ledger with conditional updates:

- a delivery whose message is already done or cancelled is acked without calling the handler
  (duplicates from the relay or from redelivery after a crash);
- a delivery ahead of the next expected sequence number means earlier messages are missing from
  the queue (still unpublished, or published late): they are processed from the ledger first;
- success: mark done, then ack;
- failure: mark failed, block the actor, ack, then close the channel so that prefetched messages go
  back to the head of the queue in order. Nothing more runs for that actor until the operator's
  replay succeeds or the message is cancelled (both read from the ledger, also after a restart);
- pause: the worker closes its channel and waits; the queue keeps filling.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, Callable

from backend.broker import ActorConsumer, Delivery
from backend.errors import BrokerUnavailable, FifoqError, TransientError, UnknownActor, UnknownMessage
from backend.ledger import Ledger, as_aware, utcnow
from backend.logs import correlation
from backend.settings import Settings
from backend.values import LANE_OPEN_STATUSES, ErrorInfo, Envelope, Message, QueueType, Status
from connectors.registry import OnInterrupted, Registration, Registry

log = logging.getLogger(__name__)

RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # seconds, the last one repeats
DRAIN_IDLE_SECONDS = 0.3
HANDLER_POLL_SECONDS = 0.05  # how often a long handler lets the connection send heartbeats
# Drain mode: how long a confirmed message may stay undelivered to us before we take it that
# another live replica holds it (a dead consumer's deliveries are requeued well within this).
HANDOVER_GRACE_SECONDS = 5.0


class Outcome(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"  # already settled: duplicate delivery
    PASSED = "passed"  # ordering key blocked: failed now, or held behind its key's failed message
    UNKNOWN = "unknown"  # the envelope names a message the ledger does not have
    BLOCKED = "blocked"  # failed now, or the actor is blocked on an earlier message
    WAIT = "wait"  # an earlier sequence number is not in the ledger yet
    BUSY = "busy"  # another owner's live claim holds the message (a replica still running it)
    STOPPED = "stopped"


@dataclass
class WorkerStats:
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    from_ledger: int = 0
    held: int = 0
    latencies: list[float] = field(default_factory=list)


def error_info(exc: BaseException) -> ErrorInfo:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type(exc).__name__, str(exc)[:2000], tb[-20000:])


class ActorWorker:
    """Serves one lane (queue) of one actor; most actors have one lane. Used from its own thread.

    For an actor with ordering keys, a failure blocks only its key: the lane goes on, and later
    messages of that key are held in the ledger until the failed one is replayed or cancelled;
    then they run in order before any newer message of the key. Those instructions reach the
    worker as control messages in the lane's own sequence, so the one consumer of the lane does
    all the work for its keys, in order, without racing another replica.
    """

    def __init__(self, runtime: "Runtime", registration: Registration, lane: int = 0) -> None:
        self.rt = runtime
        self.reg = registration
        self.actor = registration.actor
        self.lane = lane
        self.name = registration.actor if lane == 0 else f"{registration.actor}.lane{lane}"
        self.blocked_keys: set[str] = set()
        self.ledger = runtime.ledger
        self.settings = runtime.settings
        self.stats = WorkerStats()
        self.consumer: ActorConsumer | None = None
        self.expected: int | None = None  # next sequence number to process; None: ask the ledger
        self.active = False  # received a delivery in this consume session: we are the active consumer
        self._state: dict[str, Any] = {}
        self._state_read = 0.0
        self._gap_since: dict[int, float] = {}
        self._lease_renewed = 0.0
        self._foreign_since: float | None = None  # drain: since when another consumer seems to hold the head
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"handler-{self.actor}")
        self.drained = threading.Event()

    # -- state ---------------------------------------------------------------------------
    def state(self, fresh: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        if fresh or now - self._state_read >= self.settings.poll_interval:
            self._state = self.ledger.actor(self.actor)
            self._state_read = now
        return self._state

    def _consumer(self) -> ActorConsumer:
        if self.consumer is None:
            qtype = QueueType(self.state().get("queue_type", self.settings.queue_type.value))
            self.consumer = ActorConsumer(
                self.settings, self.actor, qtype, lane=self.lane, name=f"fifoq-connector-{self.rt.owner}"
            )
        return self.consumer

    @property
    def keyed(self) -> bool:
        return bool(self._state.get("keyed"))

    def _lane_open(self, doc: dict[str, Any]) -> bool:
        """Does the lane still have to run this message before the next one?"""
        if self.keyed:
            return doc["status"] in LANE_OPEN_STATUSES
        return not Status(doc["status"]).final

    def release(self) -> None:
        if self.consumer is not None and self.consumer.is_open:
            log.info("actor=%s releasing the queue (held deliveries return to the head)", self.actor)
        if self.consumer is not None:
            self.consumer.release()
        self.expected = None
        self.active = False

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event, drain: bool = False) -> None:
        failures = 0
        idle_since: float | None = None
        try:
            while not stop.is_set():
                try:
                    state = self.state()
                    if state.get("paused"):
                        self.release()
                        if drain:
                            break
                        stop.wait(self.settings.poll_interval)
                        continue
                    if state.get("blocked"):
                        self.release()
                        outcome = self._handle_blocked(state["blocked"], stop)
                        if outcome is Outcome.DONE:
                            continue
                        if drain and outcome is not Outcome.BUSY:  # busy: wait for the other claim
                            break
                        stop.wait(self.settings.poll_interval)
                        continue
                    consumer = self._consumer()
                    if not consumer.is_open:
                        consumer.open()
                        self.expected, self.active = None, False
                        log.info("actor=%s consuming %s", self.actor, consumer.queue)
                    delivery = consumer.next_delivery(self.settings.poll_interval if not drain else DRAIN_IDLE_SECONDS / 3)
                    failures = 0
                    if delivery is None:
                        if drain:
                            idle_since = idle_since or time.monotonic()
                            if time.monotonic() - idle_since >= DRAIN_IDLE_SECONDS and self._drained():
                                break
                        continue
                    idle_since = None
                    if not self.active:
                        self._activate()
                    self._on_delivery(delivery, stop)
                except (BrokerUnavailable, ConnectionError) as exc:
                    self.release()
                    delay = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)]
                    failures += 1
                    log.warning("actor=%s broker unavailable (%s), retrying in %.1fs", self.actor, exc, delay)
                    stop.wait(delay)
                except FifoqError as exc:  # the ledger is down: hold everything, retry
                    self.release()
                    delay = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)]
                    failures += 1
                    log.error("actor=%s %s, retrying in %.1fs", self.actor, exc, delay)
                    stop.wait(delay)
        finally:
            self.release()
            self._executor.shutdown(wait=True)
            self.drained.set()

    def _activate(self) -> None:
        """First delivery of a consume session: the broker made us the lane's single active
        consumer. Whatever we knew as a standby may be stale (the previous active consumer may
        have blocked keys or moved the lane on): read it again from the ledger."""
        self.active = True
        self.expected = None
        self._refresh()

    def _refresh(self) -> None:
        self.state(fresh=True)
        self.blocked_keys = {k["key"] for k in self.ledger.blocked_keys(self.actor, self.lane)}

    def _drained(self) -> bool:
        """Drain mode: the queue is empty and nothing open is left in the ledger we could run."""
        consumer = self._consumer()
        if consumer.buffered() or consumer.ready_count() > 0:
            return False
        first = self.ledger.first_open(self.actor, self.lane, keyed=self.keyed)
        if first is None:
            return True
        if first["status"] == Status.QUEUED.value and not self.active:
            # Confirmed by the broker, yet not delivered to us: another replica is the queue's
            # single active consumer and holds it (RabbitMQ does not tell a standby so; a quorum
            # queue even counts one consumer), or a consumer that just died still holds it until
            # the broker requeues its deliveries. Past a grace period it is the other replica's
            # work, not ours: the drain ends here.
            now = time.monotonic()
            self._foreign_since = self._foreign_since or now
            if now - self._foreign_since < HANDOVER_GRACE_SECONDS:
                return False
            log.info("actor=%s message=%s seq=%d held by the queue's active consumer: drain ends", self.name, first["_id"], first["seq"])
            return True
        self._foreign_since = None
        if first["status"] in LANE_OPEN_STATUSES:
            # Never confirmed (not relayed yet), left processing by a dead replica (its lease
            # decides), or lost from the queue: run it from the ledger, lowest sequence first,
            # knowing the lane's blocked keys as they are now.
            if not self.active:
                self._refresh()
            self._process_range(first["seq"], first["seq"] + 1, threading.Event())
            return False
        return True

    # -- deliveries ----------------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery, stop: threading.Event) -> None:
        consumer = self._consumer()
        try:
            env = Envelope.from_wire(json.loads(delivery.body))
            if env.actor != self.actor or env.lane != self.lane:
                raise ValueError(f"envelope for {env.actor!r} lane {env.lane} on the queue of {self.name!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            log.error("actor=%s message=%s malformed delivery dead-lettered: %s", self.actor, delivery.message_id, exc)
            consumer.dead_letter(delivery.tag)
            self.stats.dead_lettered += 1
            return
        if self.expected is None:
            self.expected = self._load_expected()
        if env.seq < self.expected:
            try:
                doc = self.ledger.message(env.id)
            except UnknownMessage:
                doc = None
            if doc is None or not self._lane_open(doc):
                consumer.ack(delivery.tag)
                self.stats.skipped += 1
                return
            self.expected = self._load_expected()  # the ledger moved (e.g. a replay): look again
        outcome = self._process_range(self.expected, env.seq, stop) if env.seq > self.expected else Outcome.DONE
        if outcome is Outcome.DONE:
            outcome = self._process(env.id, env.seq, stop)
        if outcome in (Outcome.DONE, Outcome.SKIPPED, Outcome.PASSED):
            consumer.ack(delivery.tag)
            self.expected = max(self.expected or 0, env.seq + 1)
        elif outcome is Outcome.UNKNOWN:
            log.error("actor=%s message=%s seq=%d not in the ledger: dead-lettered", self.actor, env.id, env.seq)
            consumer.dead_letter(delivery.tag)
            self.stats.dead_lettered += 1
        elif outcome is Outcome.BLOCKED:
            # The failed message is safe in the ledger; ack it if it is this one, and let go of
            # everything prefetched behind it by closing the channel (back to the head, in order).
            try:
                if self.ledger.message(env.id)["status"] == Status.FAILED.value:
                    consumer.ack(delivery.tag)
            except UnknownMessage:
                pass
            self.release()
        elif outcome in (Outcome.WAIT, Outcome.BUSY):
            # Keep order, give everything back, and look again after a pause (not in a loop of
            # reconnections): the missing message may be stored late, the other owner's claim
            # ends when it settles the message or its lease expires.
            self.release()
            stop.wait(self.settings.poll_interval)
        else:  # STOPPED: keep order, give everything back
            self.release()

    def _load_expected(self) -> int:
        """Lowest sequence number of this actor that is not settled (or missing from the ledger)."""
        keyed = bool(self.state().get("keyed"))
        first = self.ledger.first_open(self.actor, self.lane, keyed=keyed)
        candidate = first["seq"] if first else self.ledger.last_settled_seq(self.actor, self.lane, keyed=keyed) + 1
        # Sequence numbers below the candidate are settled unless one was allocated and never
        # stored (or not stored yet): find the lowest missing one.
        lo, hi = 1, candidate
        if self.ledger.count_below(self.actor, candidate, self.lane) == candidate - 1:
            return candidate
        while lo < hi:  # smallest s with count_below(s + 1) < s
            mid = (lo + hi) // 2
            if self.ledger.count_below(self.actor, mid + 1, self.lane) < mid:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _process_range(self, lo: int, hi: int, stop: threading.Event) -> Outcome:
        """Process sequence numbers lo..hi-1 from the ledger, in order (gap filling)."""
        seq = lo
        while seq < hi:
            if stop.is_set():
                return Outcome.STOPPED
            docs = {d["seq"]: d for d in self.ledger.by_seq(self.actor, seq, hi, self.lane)}
            while seq < hi and seq in docs:
                doc = docs[seq]
                if self._lane_open(doc):
                    outcome = self._process(doc["_id"], seq, stop)
                    if outcome not in (Outcome.DONE, Outcome.SKIPPED, Outcome.PASSED):
                        return outcome
                    self.stats.from_ledger += 1
                seq += 1
                self.expected = seq
            if seq < hi:
                first_seen = self._gap_since.setdefault(seq, time.monotonic())
                if time.monotonic() - first_seen >= self.settings.gap_grace:
                    self.ledger.tombstone_gap(self.actor, seq, self.lane)
                    self._gap_since.pop(seq, None)
                    continue
                log.info("actor=%s waiting for sequence %d (allocated, not stored yet)", self.actor, seq)
                return Outcome.WAIT
        return Outcome.DONE

    def _process(self, message_id: str, seq: int, stop: threading.Event, replay: bool = False) -> Outcome:
        """Run the handler on one message, with transient retries. The heart of the runtime."""
        state = self.state()
        if state.get("paused") or (state.get("blocked") and not replay):
            return Outcome.STOPPED
        if state.get("keyed") and not replay:
            outcome = self._keyed_gate(message_id, stop)
            if outcome is not None:
                return outcome
        claimed = self.ledger.claim(message_id, self.rt.owner, self.settings.claim_lease)
        if claimed is None:
            try:
                doc = self.ledger.message(message_id)
            except UnknownMessage:
                return Outcome.UNKNOWN
            if Status(doc["status"]).final:
                self.stats.skipped += 1
                return Outcome.SKIPPED
            if doc["status"] == Status.PROCESSING.value:
                log.info("actor=%s message=%s seq=%d claimed by %s until its lease expires: waiting", self.actor, message_id, seq, doc.get("owner"))
                return Outcome.BUSY
            if state.get("keyed"):
                return Outcome.PASSED  # failed or held: in the custody of its key
            if doc["status"] == Status.FAILED.value:
                self._block(doc, ErrorInfo(**{k: doc["last_error"][k] for k in ("type", "message", "traceback")}) if doc.get("last_error") else ErrorInfo("Failed", "failed earlier"))
            return Outcome.BLOCKED
        doc, previous = claimed
        with correlation(doc.get("correlation_id")):  # on every log line of the attempt
            return self._attempt(doc, previous, stop)

    def _attempt(self, doc: dict[str, Any], previous: str, stop: threading.Event) -> Outcome:
        """The claimed message's attempt: handler call, transient retries, then done or failed."""
        message_id, seq = doc["_id"], doc["seq"]
        if previous == Status.PROCESSING.value:
            err = ErrorInfo("InterruptedDelivery", f"attempt {doc['attempts'] - 1} was interrupted (connector stopped mid-handler)")
            self.ledger.note_attempt(dict(doc, attempts=doc["attempts"] - 1), "interrupted", err)
            log.warning("actor=%s message=%s seq=%d previous attempt was interrupted", self.actor, message_id, seq)
            if self.reg.on_interrupted is OnInterrupted.BLOCK:
                self.ledger.fail(doc, self.rt.owner, err)
                return self._block(doc, err)
        retries = self.settings.transient_retries
        attempt = 0
        while True:
            started = time.monotonic()
            exc = self._call(doc)
            if exc is None:
                if not self.ledger.complete(doc, self.rt.owner):
                    log.warning("actor=%s message=%s completed but no longer owned", self.actor, message_id)
                elapsed = time.monotonic() - started
                self.stats.processed += 1
                self.stats.latencies.append(elapsed)
                self._notify("done", doc, elapsed)
                log.debug("actor=%s message=%s seq=%d done", self.actor, message_id, seq)
                return Outcome.DONE
            err = error_info(exc)
            if isinstance(exc, TransientError) and attempt < retries and not stop.is_set():
                delay = min(self.settings.transient_backoff_max, self.settings.transient_backoff * (2**attempt))
                attempt += 1
                self.stats.retried += 1
                self._notify("retried", doc, time.monotonic() - started)
                self.ledger.note_attempt(doc, "transient", err)
                log.warning("actor=%s message=%s transient error (%s), retry %d/%d in %.1fs", self.actor, message_id, exc, attempt, retries, delay)
                self._wait(delay, stop, doc)
                doc = self.ledger.restart_attempt(doc, self.rt.owner)
                continue
            self.ledger.fail(doc, self.rt.owner, err)
            self.stats.failed += 1
            self._notify("failed", doc, time.monotonic() - started)
            what = f"key {doc.get('key')!r}" if self.keyed else "actor"
            log.error("actor=%s message=%s seq=%d failed, %s blocked: %s: %s", self.actor, message_id, seq, what, err.type, err.message)
            return self._block(doc, err)

    def _notify(self, kind: str, doc: dict[str, Any], seconds: float) -> None:
        try:
            self.rt.on_event(kind, self.actor, doc, seconds)
        except Exception:  # noqa: BLE001 - a broken hook must not stop the actor
            log.exception("actor=%s message=%s on_event hook failed", self.actor, doc["_id"])

    def _block(self, doc: dict[str, Any], err: ErrorInfo) -> Outcome:
        if self.keyed:
            key = _key(doc)
            self.ledger.block_key(self.actor, key, self.lane, doc, err)
            self.blocked_keys.add(key)
            return Outcome.PASSED
        self.ledger.set_blocked(self.actor, doc["_id"], doc["seq"], err)
        self.state(fresh=True)
        return Outcome.BLOCKED

    # -- ordering keys ---------------------------------------------------------------------
    def _keyed_gate(self, message_id: str, stop: threading.Event) -> Outcome | None:
        """Before running a message of a keyed actor: run control messages, hold messages whose
        key is blocked. None: go on and run it."""
        try:
            doc = self.ledger.message(message_id)
        except UnknownMessage:
            return Outcome.UNKNOWN
        if doc.get("control"):
            return self._on_control(doc, stop)
        key = _key(doc)
        if key in self.blocked_keys and doc["status"] in (Status.PENDING.value, Status.QUEUED.value):
            if self.ledger.hold(message_id):
                self.stats.held += 1
                log.info("actor=%s message=%s seq=%d held behind blocked key %r", self.actor, message_id, doc["seq"], key)
            return Outcome.PASSED
        return None

    def _on_control(self, ctl: dict[str, Any], stop: threading.Event) -> Outcome:
        claimed = self.ledger.claim(ctl["_id"], self.rt.owner, self.settings.claim_lease)
        if claimed is None:
            if self.ledger.message(ctl["_id"])["status"] == Status.PROCESSING.value:
                return Outcome.BUSY  # a replica that died while carrying it out: its lease runs
            return Outcome.SKIPPED  # already carried out
        outcome = self._resume_key(ctl["key"], stop)
        if outcome in (Outcome.DONE, Outcome.PASSED):
            self.ledger.complete(claimed[0], self.rt.owner)
            return Outcome.DONE
        # Stopped, paused or waiting on another owner's claim: the instruction is not carried out
        # yet. Give it back so that it comes again with the rest of the lane.
        self.ledger.unclaim(ctl["_id"], self.rt.owner)
        return outcome

    def _resume_key(self, key: str, stop: threading.Event) -> Outcome:
        """Replay the key's failed message if asked, then run its held messages in order; unblock
        the key when none is left. A failure on the way blocks the key again on that message.

        DONE: the key is released; PASSED: it is (still, or again) blocked, nothing more to do;
        STOPPED or BUSY: interrupted, to be carried out again."""
        state = self.ledger.key_state(self.actor, key)
        blocked = (state or {}).get("blocked")
        if blocked:
            head = self.ledger.message(blocked["message_id"])
            replay = head["status"] == Status.FAILED.value and head.get("replay_requested")
            if head["status"] == Status.FAILED.value and not replay:
                return Outcome.PASSED  # nothing new: still blocked
            if replay or head["status"] == Status.PROCESSING.value:  # asked, or a replay cut off
                log.info("actor=%s message=%s replaying for key %r", self.actor, head["_id"], key)
                outcome = self._process(head["_id"], head["seq"], stop, replay=True)
                if outcome not in (Outcome.DONE, Outcome.SKIPPED):
                    return outcome
        while True:
            held = self.ledger.held(self.actor, key)
            if not held:
                break
            for doc in held:
                if stop.is_set():
                    return Outcome.STOPPED
                outcome = self._process(doc["_id"], doc["seq"], stop, replay=True)
                if outcome not in (Outcome.DONE, Outcome.SKIPPED):
                    return outcome
        self.ledger.unblock_key(self.actor, key)
        self.blocked_keys.discard(key)
        log.info("actor=%s key %r released", self.actor, key)
        return Outcome.DONE

    def _renew(self, doc: dict[str, Any]) -> None:
        """Keep our claim on the message alive while we hold it (a third of the lease apart)."""
        now = time.monotonic()
        if now - self._lease_renewed < self.settings.claim_lease / 3:
            return
        self._lease_renewed = now
        try:
            if not self.ledger.renew_lease(doc["_id"], self.rt.owner, self.settings.claim_lease):
                log.error("actor=%s message=%s our claim was lost (lease expired and taken over?)", self.actor, doc["_id"])
        except FifoqError as exc:  # the ledger is down: the handler goes on, its outcome is written after
            log.warning("actor=%s message=%s lease not renewed: %s", self.actor, doc["_id"], exc)

    def _call(self, doc: dict[str, Any]) -> BaseException | None:
        """Run the handler in the handler thread while this thread keeps the connection served
        and the claim on the message renewed."""
        message = Message.from_doc(doc)
        self._lease_renewed = time.monotonic()
        # The handler's own log lines carry the message's correlation id too.
        future: Future[None] = self._executor.submit(contextvars.copy_context().run, self.reg.handler, message)
        while True:
            self._renew(doc)
            try:
                future.result(timeout=HANDLER_POLL_SECONDS)
                break
            except FutureTimeout:
                pass
            except BaseException:  # noqa: BLE001 - the handler's exception, returned below
                break
            if self.consumer is not None and self.consumer.is_open:
                try:
                    self.consumer.pump(0)  # heartbeats, without waiting
                except BrokerUnavailable as exc:
                    # Keep waiting for the handler: its outcome goes to the ledger; the delivery
                    # comes back after reconnecting and is deduplicated.
                    log.warning("actor=%s message=%s connection lost during handler: %s", self.actor, doc["_id"], exc)
        return future.exception()

    def _wait(self, seconds: float, stop: threading.Event, doc: dict[str, Any]) -> None:
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end:
            self._renew(doc)
            if self.consumer is not None and self.consumer.is_open:
                self.consumer.pump(min(0.1, end - time.monotonic()))
            else:
                stop.wait(min(0.1, end - time.monotonic()))

    def _handle_blocked(self, blocked: dict[str, Any], stop: threading.Event) -> Outcome:
        """The actor is blocked: run a requested replay, or unblock if the message was settled."""
        try:
            doc = self.ledger.message(blocked["message_id"])
        except UnknownMessage:
            doc = None
        if doc is None or Status(doc["status"]).final or doc["status"] in (Status.PENDING.value, Status.QUEUED.value):
            self.ledger.clear_blocked(self.actor, blocked["message_id"])
            self.state(fresh=True)
            log.info("actor=%s unblocked: message %s is %s", self.actor, blocked["message_id"], doc and doc["status"])
            return Outcome.DONE
        replay = doc["status"] == Status.FAILED.value and doc.get("replay_requested")
        # Processing: a replay is running in another replica (its lease is live: wait), or was
        # cut off by a crash (lease expired: claimed again, with the actor's on_interrupted rule).
        if replay or doc["status"] == Status.PROCESSING.value:
            if replay:
                log.info("actor=%s message=%s replaying (requested by %s)", self.actor, doc["_id"], doc["replay_requested"].get("by"))
            outcome = self._process(doc["_id"], doc["seq"], stop, replay=True)
            if outcome is Outcome.DONE:
                self.ledger.clear_blocked(self.actor, doc["_id"])
                self.state(fresh=True)
                log.info("actor=%s message=%s replay succeeded, actor unblocked", self.actor, doc["_id"])
                return Outcome.DONE
            return Outcome.BUSY if outcome is Outcome.BUSY else Outcome.BLOCKED
        return Outcome.BLOCKED


def _key(doc: dict[str, Any]) -> str:
    # Messages of a keyed actor that came through a subscription without a key share one key.
    return doc.get("key") or ""


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
        self.workers: dict[str, ActorWorker] = {}
        self.threads: list[threading.Thread] = []

    def start(self, drain: bool = False) -> "Runtime":
        for actor in self.actors:
            reg = self.registry.get(actor)
            try:
                doc = self.ledger.actor(actor)
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
            worker = ActorWorker(self, reg, lane)
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
                doc = self.ledger.actor(reg.actor)
            except UnknownActor:
                self.stop_event.wait(self.settings.poll_interval)
                continue
            except FifoqError as exc:  # the ledger is down: keep waiting
                log.warning("actor=%s cannot read its declaration yet: %s", reg.actor, exc)
                self.stop_event.wait(RECONNECT_BACKOFF[-1])
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

    def blocked_since(self, actor: str) -> timedelta | None:
        b = self.ledger.actor(actor).get("blocked")
        return utcnow() - as_aware(b["since"]) if b else None  # type: ignore[operator]
