"""A lane worker: serves one queue (lane) of one actor, in sequence order, from its own thread.

The broker delivers envelopes (references, in emission order); the ledger holds the truth. The
worker walks its lane's sequence numbers (connectors.cursor): for each position it reads the
message and either steps over it (settled), waits (a gap, another replica's live claim), runs it
(a conditional claim, the handler, a fenced settle: connectors.attempt), stops the lane (no
ordering keys: it failed) or hands it to its key (connectors.keys). A delivery ahead of the
position makes the worker run the messages before it from the ledger first; a delivery behind it
is a duplicate and is acked. The supervisor part of the loop honours pause, waits while the lane
is blocked (a replay or a cancel moves it on), and lets go of the queue by closing the channel,
which returns every unacked delivery to the head in order (never nack, never basic.cancel).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backend import backoff
from backend import transitions as tr
from backend.broker import ActorConsumer, Delivery
from backend.errors import BrokerUnavailable, FifoqError, StoreError
from backend.ledger import as_aware, lane_id, message_id, utcnow
from backend.logs import correlation
from backend.values import Envelope, ErrorInfo, QueueType
from connectors.attempt import AttemptRunner, Ended, error_info
from connectors.cursor import LaneCursor
from connectors.keys import KeyGate
from connectors.registry import OnInterrupted, Registration
from connectors.steps import Step

if TYPE_CHECKING:
    from connectors.runtime import Runtime

log = logging.getLogger(__name__)

# Drain mode: how long a confirmed message may stay undelivered to us before we take it that
# another live replica holds it (a dead consumer's deliveries are requeued well within this).
HANDOVER_GRACE_SECONDS = 5.0
DRAIN_MAX_ERRORS = 3  # a drain run stops a worker (and exits non-zero) after this many in a row
LATENCY_SAMPLES = 1000


@dataclass
class WorkerStats:
    processed: int = 0
    skipped: int = 0  # deliveries of messages already settled or passed (duplicates)
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    from_ledger: int = 0  # messages run without their own delivery (unpublished, lost, gaps)
    held: int = 0
    errors: int = 0  # unexpected errors the worker survived (logged, recorded on the lane)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


class LaneWorker:
    """See the module docstring. Used from its own thread."""

    def __init__(self, runtime: Runtime, registration: Registration, lane: int = 0) -> None:
        self.rt = runtime
        self.reg = registration
        self.actor = registration.actor
        self.lane = lane
        self.name = registration.actor if lane == 0 else f"{registration.actor}.lane{lane}"
        self.ledger = runtime.ledger
        self.settings = runtime.settings
        self.owner = runtime.owner
        self.stats = WorkerStats()
        self.consumer: ActorConsumer | None = None
        self.cursor = LaneCursor(self.settings, self.ledger, self.actor, lane, self.name)
        self.runner = AttemptRunner(self.settings, self.ledger, self.owner, self.actor, registration.handler, self._pump)
        self.keys: KeyGate | None = None
        self.stop = threading.Event()
        self.active = False  # received a delivery in this consume session: the queue's active consumer
        self.blocked = False  # no ordering keys: the message at the position failed
        self._state: dict[str, Any] = {}
        self._preclaimed: dict[str, Any] | None = None
        self._current: Delivery | None = None
        self._idle_since: float | None = None
        self._last_sweep = time.monotonic()
        self._last_resume = float("-inf")
        self._foreign_since: float | None = None
        self._ran = False  # the last step ran a handler
        self._error_shown = False  # we recorded an unexpected error on the lane (cleared once healthy)
        self.drained = threading.Event()

    # -- state ---------------------------------------------------------------------------
    def state(self, fresh: bool = False, max_age: float | None = None) -> dict[str, Any]:
        """The actor's state document, no older than FIFOQ_POLL_INTERVAL (or `max_age`)."""
        age = 0.0 if fresh else (self.settings.poll_interval if max_age is None else max_age)
        self._state = self.rt.states.get(self.actor, age)
        if self._state.get("keyed") and self.keys is None:
            self.keys = KeyGate(self)
        return self._state

    @property
    def keyed(self) -> bool:
        return self.keys is not None

    def may_run(self) -> bool:
        """Nothing stops us from starting a handler now (state read within FIFOQ_POLL_INTERVAL)."""
        return not self.stop.is_set() and not self.state().get("paused")

    def other_live_claim(self, doc: dict[str, Any]) -> bool:
        """Another owner's attempt on `doc` whose lease has not ended on the database's clock."""
        if not tr.is_processing(doc["status"]) or doc.get("owner") == self.owner:
            return False
        until = as_aware(doc.get("lease_until"))
        return until is not None and until >= self.ledger.now()

    def _consumer(self) -> ActorConsumer:
        if self.consumer is None:
            qtype = QueueType(self.state().get("queue_type", self.settings.queue_type.value))
            self.consumer = ActorConsumer(self.settings, self.actor, qtype, lane=self.lane, name=f"fifoq-connector-{self.owner}")
        return self.consumer

    def _pump(self, seconds: float) -> None:
        """Serve the broker connection (heartbeats, deliveries) for up to `seconds`."""
        if self.consumer is not None and self.consumer.is_open:
            try:
                self.consumer.pump(seconds)
                return
            except BrokerUnavailable as exc:
                # The handler goes on: its outcome goes to the ledger; deliveries come back after
                # reconnecting and are recognised as passed.
                log.warning("actor=%s connection lost while busy: %s", self.name, exc)
        if seconds > 0:
            self.stop.wait(seconds)

    def release(self) -> None:
        """Let go of the queue: unacked deliveries return to its head, in order."""
        if self.consumer is not None and self.consumer.is_open:
            log.info("actor=%s releasing the queue (held deliveries return to the head)", self.name)
        if self.consumer is not None:
            self.consumer.release()
        self._current = None
        self.active = False
        self._drop_preclaim()

    def _drop_preclaim(self) -> None:
        """Give back the next message claimed together with the last settle, if still unused."""
        pre, self._preclaimed = self._preclaimed, None
        if pre is not None:
            try:
                self.ledger.give_back(pre, self.owner)
            except FifoqError as exc:  # its lease ends it
                log.warning("actor=%s message=%s claim not given back: %s", self.name, pre["_id"], exc)

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event, drain: bool = False) -> None:
        self.stop = stop
        failures = 0
        try:
            self.state(fresh=True)
            while not stop.is_set():
                try:
                    done = self._tick(drain)
                    failures = 0
                    self._clear_error()  # a turn of the loop went through: healthy again
                    if done:
                        break
                except (BrokerUnavailable, ConnectionError) as exc:
                    failures = self._back_off(failures, "broker unavailable", exc)
                except FifoqError as exc:  # the ledger is down: hold everything, retry
                    failures = self._back_off(failures, "ledger unavailable", exc)
                except Exception as exc:
                    self.stats.errors += 1
                    log.exception("actor=%s unexpected error in the worker (recorded on the lane): %s", self.name, exc)
                    self._record_error(exc)
                    if drain and failures + 1 >= DRAIN_MAX_ERRORS:
                        log.error("actor=%s drain run given up after %d unexpected errors in a row", self.name, failures + 1)
                        break
                    failures = self._back_off(failures, "unexpected error", exc)
        finally:
            try:
                if self.cursor.unfolded:
                    self.cursor.fold()
            except FifoqError as exc:
                log.warning("actor=%s could not fold the lane's watermark on the way out: %s", self.name, exc)
            finally:
                self.release()
                self.runner.close()
                self.drained.set()

    def _back_off(self, failures: int, what: str, exc: BaseException) -> int:
        self.release()
        self.cursor.forget()
        delay = backoff.RECONNECT.delay(failures)
        log.warning("actor=%s %s (%s), retrying in %.1fs", self.name, what, exc, delay)
        self.stop.wait(delay)
        return failures + 1

    def _record_error(self, exc: BaseException) -> None:
        err = error_info(exc)
        try:
            self.ledger.lanes.col.update_one({"_id": lane_id(self.actor, self.lane)}, {"$set": {"worker_error": dict(
                err.to_doc(), owner=self.owner, at=self.ledger.now())}})
            self._error_shown = True
        except FifoqError:
            pass

    def _clear_error(self) -> None:
        """The worker is healthy again: the lane stops showing its last error (ours only)."""
        if self._error_shown:
            self.ledger.lanes.col.update_one({"_id": lane_id(self.actor, self.lane), "worker_error.owner": self.owner},
                                             {"$unset": {"worker_error": ""}})
            self._error_shown = False

    def _tick(self, drain: bool) -> bool:
        """One turn of the loop. True: the drain run is over."""
        state = self.state(max_age=None if (self._state.get("paused") or self.blocked) else self.settings.idle_poll)
        if state.get("paused"):
            self.release()
            if drain:
                return True
            self.stop.wait(self.settings.poll_interval)
            self.state()
            return False
        if self.blocked:
            self.release()
            step = self._step(self.cursor.ensure())
            if step is Step.BLOCKED or step is Step.WAIT:
                if drain and step is Step.BLOCKED:
                    return True
                self.stop.wait(self.settings.poll_interval)
                return False
            self.blocked = False
            log.info("actor=%s unblocked at seq %d", self.name, self.cursor.pos or 0)
            return False
        # Custody is looked at every poll interval while the lane document we hold has entries,
        # and once when we have not read it yet (a restarted connector: the keys blocked before
        # it started, and the replays asked for them, are not left to the next sweep).
        if self.keys is not None and (self.cursor.lane_doc is None or self.cursor.lane_doc.get("custody")) and \
                time.monotonic() - self._last_resume >= self.settings.poll_interval:
            self._last_resume = time.monotonic()
            self.keys.resume()
        consumer = self._consumer()
        if not consumer.is_open:
            consumer.open()
            self.active = False
            log.info("actor=%s consuming %s", self.name, consumer.queue)
        if self._current is None:
            delivery = consumer.next_delivery(self.settings.drain_idle / 3 if drain else self.settings.poll_interval)
            if delivery is None:
                return self._idle(drain)
            self._idle_since = None
            if not self.active:
                self._activate()
            self._current = delivery
        self._on_delivery(self._current)
        return False

    def _activate(self) -> None:
        """First delivery of a consume session: the broker made us the lane's single active
        consumer. Whatever we knew as a standby may be stale: read it again from the ledger."""
        self.active = True
        self._foreign_since = None
        self.cursor.forget()
        self.state(fresh=True)

    # -- deliveries ----------------------------------------------------------------------
    def _on_delivery(self, delivery: Delivery) -> None:
        consumer = self._consumer()
        env = self._decode(delivery)
        if env is None:
            consumer.dead_letter(delivery.tag)
            self.stats.dead_lettered += 1
            self._current = None
            return
        pos = self.cursor.ensure()
        if env.seq < pos:
            consumer.ack(delivery.tag)
            self.stats.skipped += 1
            self._current = None
            return
        step = Step.PASSED
        while self.cursor.ensure() <= env.seq:
            at = self.cursor.ensure()
            step = self._step(at)
            if step is Step.PASSED and at < env.seq and self._ran:
                self.stats.from_ledger += 1
            if step not in (Step.PASSED, Step.CONTINUE):
                break
        if self.cursor.ensure() > env.seq:
            consumer.ack(delivery.tag)
            self._current = None  # the watermark follows every FOLD_EVERY messages, and when idle
            return
        if step is Step.WAIT:
            # Keep the deliveries and look again after a pause, on the open connection: the
            # missing message may be stored late, another replica's claim ends when it settles
            # the message or its lease ends on the database's clock.
            self._pump(self.settings.poll_interval)
            return
        if step is Step.DEAD_LETTER:
            log.error("actor=%s message=%s seq=%d not reserved in the ledger: dead-lettered", self.name, env.id, env.seq)
            consumer.dead_letter(delivery.tag)
            self.stats.dead_lettered += 1
            self._current = None
            return
        if step is Step.BLOCKED:
            # The failed message is safe in the ledger: ack it if it is this delivery's, and let
            # go of everything prefetched behind it (back to the head of the queue, in order).
            if env.seq == self.cursor.pos:
                consumer.ack(delivery.tag)
            self.blocked = True
        self.release()  # BLOCKED or STOPPED: give everything back in order

    def _decode(self, delivery: Delivery) -> Envelope | None:
        try:
            env = Envelope.from_wire(json.loads(delivery.body))
            if env.actor != self.actor or env.lane != self.lane:
                raise ValueError(f"envelope for {env.actor!r} lane {env.lane} on the queue of {self.name!r}")
            if env.id != message_id(env.actor, env.lane, env.seq):
                raise ValueError(f"envelope id {env.id!r} is not the message at seq {env.seq}")
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            log.error("actor=%s message=%s malformed delivery dead-lettered: %s", self.name, delivery.message_id,
                      str(exc)[:300])
            return None
        return env

    # -- one position ---------------------------------------------------------------------
    def _step(self, seq: int) -> Step:
        """Decide for the message at the position `seq` (see the module docstring)."""
        self._ran = False
        pre = self._preclaimed
        if pre is not None:
            self._preclaimed = None
            if pre["seq"] == seq:
                return self._execute(pre, claimed=True)
            self.ledger.give_back(pre, self.owner)
        doc = self.cursor.doc(seq)
        if doc is None:
            lane = self.cursor.lane_doc or self.cursor.refresh_lane()
            if seq >= int(lane["next"]) and seq >= int(self.cursor.refresh_lane()["next"]):
                return Step.DEAD_LETTER
            return Step.CONTINUE if self.cursor.gap(seq) else Step.WAIT
        status = doc["status"]
        if tr.is_final(status):
            self.cursor.passed(doc)
            return Step.PASSED
        if self.keys is not None:
            return self.keys.front(doc)
        if tr.is_failed(status) and not doc.get("replay_requested"):
            fresh = self.cursor.fresh(seq)
            if fresh is not None and tr.is_failed(fresh["status"]) and not fresh.get("replay_requested"):
                self.cursor.fold()
                return Step.BLOCKED
            return Step.CONTINUE
        if tr.is_processing(status) and self.other_live_claim(doc):
            fresh = self.cursor.fresh(seq)
            if fresh is not None and self.other_live_claim(fresh):
                log.info("actor=%s message=%s seq=%d claimed by %s until its lease ends: waiting", self.name, doc["_id"],
                         seq, fresh.get("owner"))
                return Step.WAIT
            return Step.CONTINUE
        return self.run_message(doc)

    def run_message(self, doc: dict[str, Any]) -> Step:
        """Claim and run the message at the position, then settle it and step over it."""
        return self._execute(doc, claimed=False)

    def _execute(self, doc: dict[str, Any], *, claimed: bool) -> Step:
        with correlation(doc.get("correlation_id")):  # on every log line of the attempt
            return self._execute_in_context(doc, claimed=claimed)

    def _execute_in_context(self, doc: dict[str, Any], *, claimed: bool) -> Step:
        if not claimed:
            if not self.may_run():
                return Step.STOPPED
            got = self.ledger.claim(doc, self.owner, self.settings.claim_lease)
            if got is None:
                self.cursor.fresh(doc["seq"])
                return Step.CONTINUE
            doc = got
        ended, doc, err = self._call(doc)
        if ended is None:
            return Step.STOPPED
        if ended is Ended.LOST:
            self.cursor.fresh(doc["seq"])
            return Step.CONTINUE
        self._ran = True
        if ended is Ended.SUCCEEDED:
            return self._succeeded(doc)
        assert err is not None
        if self.keys is None:
            # The watermark first, so that the lane's first open message is the failed one.
            self.cursor.fold()
        if not self._settle(doc, err):
            self.cursor.fresh(doc["seq"])
            return Step.CONTINUE
        self._log_failure(doc, err)
        failed = dict(doc, status=tr.F, last_error=err.to_doc())
        self.cursor.remember(failed)
        if self.keys is not None:
            return self.keys.after_failure(failed)
        return Step.BLOCKED

    def _call(self, doc: dict[str, Any]) -> tuple[Ended | None, dict[str, Any], ErrorInfo | None]:
        """Run the claimed message's attempt (interrupted attempts first follow the actor's rule).
        (None, doc, None): stopped or paused before the call, the claim given back."""
        if doc.get("claimed_from") == tr.PR:
            err = ErrorInfo("InterruptedDelivery", f"attempt {doc['attempts'] - 1} was interrupted (connector stopped mid-handler)")
            self.ledger.note_attempt(dict(doc, attempts=doc["attempts"] - 1), self.owner, "interrupted", err)
            log.warning("actor=%s message=%s seq=%d previous attempt was interrupted", self.name, doc["_id"], doc["seq"])
            if self.reg.on_interrupted is OnInterrupted.BLOCK:
                return Ended.FAILED, doc, err
        if not self.may_run():
            self.ledger.give_back(doc, self.owner)
            return None, doc, None
        result = self.runner.run(doc, self.stop, lambda d, s: self._notify("retried", d, s))
        if result.ended is Ended.STOPPED:
            self.ledger.give_back(result.doc, self.owner)
            return None, result.doc, None
        if result.ended is Ended.SUCCEEDED:
            self.stats.latencies.append(result.seconds)
        return result.ended, result.doc, result.error

    def _succeeded(self, doc: dict[str, Any]) -> Step:
        """Settle the success and step over it; claim the next message in the same round trip
        when it is known and may run."""
        nxt = self.cursor.cached(doc["seq"] + 1)
        if nxt is None and (self.cursor.read_ahead_was_full or (self.consumer is not None and self.consumer.buffered())):
            # The next message is most likely stored (the last read-ahead found every number it
            # asked for, or deliveries are waiting): read ahead now, so that its claim travels
            # with this settle (one round trip instead of settle, read, claim). Only an
            # optimisation: the ledger failing here must not keep the settle below from being
            # retried in place (leaving the loop would run the handler again).
            try:
                nxt = self.cursor.doc(doc["seq"] + 1)
            except FifoqError as exc:
                log.warning("actor=%s message=%s read-ahead failed (%s): settling alone", self.name, doc["_id"], exc)
        settled: bool
        if nxt is not None and tr.is_runnable(nxt["status"]) and self.may_run() and (
            self.keys is None or self.keys.may_front_run(nxt)
        ):
            settled, self._preclaimed = self._settle_and_claim(doc, nxt)
        else:
            settled = self._settle(doc, None)
        if not settled:
            self.cursor.fresh(doc["seq"])
            return Step.CONTINUE
        self.stats.processed += 1
        self._notify("done", doc, self.stats.latencies[-1] if self.stats.latencies else 0.0)
        log.debug("actor=%s message=%s seq=%d done", self.name, doc["_id"], doc["seq"])
        self.cursor.passed(settled_copy(doc))
        return Step.PASSED

    def _settle_and_claim(self, doc: dict[str, Any], nxt: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        try:
            return self.ledger.settle_and_claim(doc, nxt, self.owner, self.settings.claim_lease)
        except StoreError:
            return self._settle(doc, None), None

    def _settle(self, doc: dict[str, Any], err: ErrorInfo | None) -> bool:
        """Write the attempt's outcome, retrying in place while the ledger is unreachable (a lost
        write is never answered by running the handler again). False: the attempt was taken over."""
        failures = 0
        while True:
            try:
                return self.ledger.settle(doc, self.owner, err)
            except StoreError as exc:
                delay = backoff.RECONNECT.delay(failures)
                failures += 1
                log.warning("actor=%s message=%s outcome not written yet (%s): retrying in %.1fs", self.name, doc["_id"], exc, delay)
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    self.runner.renew(doc)
                    self._pump(min(0.1, max(0.0, end - time.monotonic())))
                if self.runner.lost:
                    return False

    def run_custody(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Run a message of a key's custody; returns its settled document if it is done, None if it
        failed again, was taken over, or was given back (paused, stopping)."""
        with correlation(doc.get("correlation_id")):
            return self._run_custody(doc)

    def _run_custody(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        got = self.ledger.claim(doc, self.owner, self.settings.claim_lease)
        if got is None:
            return None
        ended, got, err = self._call(got)
        if ended is None or ended is Ended.LOST:
            return None
        if ended is Ended.SUCCEEDED:
            if not self._settle(got, None):
                return None
            self.stats.processed += 1
            self.stats.from_ledger += 1
            self._notify("done", got, self.stats.latencies[-1] if self.stats.latencies else 0.0)
            return settled_copy(got)
        assert err is not None
        if self._settle(got, err):
            self._log_failure(got, err)
        return None

    def _log_failure(self, doc: dict[str, Any], err: ErrorInfo) -> None:
        self.stats.failed += 1
        self._notify("failed", doc, 0.0)
        what = f"key {doc.get('key') or ''!r}" if self.keys is not None else "actor"
        log.error("actor=%s message=%s seq=%d failed, %s blocked: %s: %s", self.name, doc["_id"], doc["seq"], what,
                  err.type, err.message)

    def _notify(self, kind: str, doc: dict[str, Any], seconds: float) -> None:
        try:
            self.rt.on_event(kind, self.actor, doc, seconds)
        except Exception:
            log.exception("actor=%s message=%s on_event hook failed", self.name, doc["_id"])

    # -- idle: drain end, sweep ------------------------------------------------------------
    def _idle(self, drain: bool) -> bool:
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        if self.cursor.unfolded:
            self.cursor.fold()
        if drain:
            return now - self._idle_since >= self.settings.drain_idle and self._drained()
        if now - self._last_sweep >= self.settings.sweep_interval:
            self._last_sweep = now
            self._sweep()
        return False

    def _sweep(self) -> None:
        """Run, from the ledger, open messages at our position that the broker has not delivered
        for a sweep interval: never published (the relay is not running) or lost from the queue
        (purged, deleted, dead-lettered). Safe beside an active replica: a claim is exclusive and
        a message runs only once everything before it is settled."""
        pos = self.cursor.ensure()
        lane = self.cursor.refresh_lane()
        if pos > int(lane["next"]) - 1:
            return
        doc = self.cursor.fresh(pos)
        if doc is None or tr.is_final(doc["status"]):
            self._step(pos)  # a gap to close, or a settled message to step over
            return
        created = as_aware(doc.get("published_at") or doc.get("created_at"))
        if created is None or (self.ledger.now() - created).total_seconds() < self.settings.sweep_interval:
            return
        log.warning("actor=%s message=%s seq=%d open for %.0fs and not delivered: running it from the ledger",
                    self.name, doc["_id"], pos, (self.ledger.now() - created).total_seconds())
        top = int(lane["next"]) - 1
        while self.cursor.ensure() <= top and not self.stop.is_set():
            step = self._step(self.cursor.ensure())
            if step is Step.PASSED and self._ran:
                self.stats.from_ledger += 1
            if step not in (Step.PASSED, Step.CONTINUE):
                if step is Step.BLOCKED:
                    self.blocked = True
                break

    def _drained(self) -> bool:
        """Drain mode: the queue is empty and nothing is left in the ledger that we could run."""
        consumer = self._consumer()
        if consumer.buffered() or consumer.ready_count() > 0:
            return False
        if self.keys is not None and self.keys.resumable():
            if not self.may_run():
                return True
            if not self.keys.resume():
                self.stop.wait(self.settings.poll_interval)  # another replica's claim: its lease decides
            return False
        pos = self.cursor.ensure()
        lane = self.cursor.refresh_lane()
        if self.cursor.ensure() > int(lane["next"]) - 1:
            return True
        pos = self.cursor.ensure()
        doc = self.cursor.fresh(pos)
        if doc is not None and doc["status"] == tr.Q and doc.get("published_at") and not self.active:
            # Confirmed by the broker, yet not delivered to us: another replica is the queue's
            # single active consumer and holds it (RabbitMQ does not tell a standby so), or a
            # consumer that just died holds it until the broker requeues its deliveries. Past a
            # grace period it is the other replica's work, not ours: the drain ends here.
            now = time.monotonic()
            self._foreign_since = self._foreign_since or now
            if now - self._foreign_since < HANDOVER_GRACE_SECONDS:
                return False
            log.info("actor=%s message=%s seq=%d held by the queue's active consumer: drain ends", self.name, doc["_id"], pos)
            return True
        self._foreign_since = None
        step = self._step(pos)
        if step is Step.PASSED and self._ran:
            self.stats.from_ledger += 1
        if step is Step.BLOCKED:
            self.blocked = True
            return True
        if step is Step.STOPPED:
            return True
        if step is Step.WAIT:
            self.stop.wait(self.settings.poll_interval)
        return False


def settled_copy(doc: dict[str, Any]) -> dict[str, Any]:
    """Our copy of a message we just settled as done, as the lane's counters need it (the
    ledger's own copy differs only by milliseconds in `finished_at`)."""
    return dict(doc, status=tr.D, finished_at=utcnow(), attempt_log=doc.get("attempt_log") or [])
