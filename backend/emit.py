"""emit_event: validate, fan out to subscribers, store one message each, publish with confirms.

Two sequential ledger round trips before the publish: the sequence numbers of every lane the
event goes to (one atomic increment per lane, sent concurrently), then one ordered insert of all
the messages. Marking the published messages is done off the caller's path, in batches.

Idempotent: every event has an id (the caller's idempotency key, or a new one), unique per
subscriber in the ledger. A retried emit_event/emit_many with the same keys, after any error or
crash, stores nothing twice and returns the ids of the messages stored the first time. Once the
messages are stored, emit_event does not raise: publishing is retried by the relay.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from backend.broker import BrokerRefused, Publisher
from backend.errors import BrokerUnavailable, DuplicateKey, FifoqError, OutcomeUnknown, SchemaViolation, StoreError, ValidationError
from backend.ledger import Ledger, new_event_ids
from backend.payloads import normalise
from backend.settings import Settings
from backend.subscriptions import ActorSpec, Subscriptions, lane_of, schema_errors
from backend.values import EVENT_NAME_RE, MAX_EVENT_NAME, Envelope, QueueType, Status

log = logging.getLogger(__name__)

MAX_CORRELATION_ID = 200
MAX_IDEMPOTENCY_KEY = 200
SEQ_RETRIES = 5
MARK_BATCH = 500
MARK_LINGER_SECONDS = 0.05


@dataclass(frozen=True)
class Event:
    name: str
    payload: Any
    correlation_id: str | None = None
    idempotency_key: str | None = None


@dataclass
class _Planned:
    event: Event
    event_id: str
    targets: list[tuple[str, int, str | None]]  # (actor, lane, ordering key)


class _Marker:
    """Records the broker's confirms in the ledger off the caller's path, in batches. If the
    process stops first, the relay publishes those messages again (consumers skip duplicates)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: queue.Queue[list[str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, ids: list[str]) -> None:
        if not ids:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fifoq-publish-marks", daemon=True)
                self._thread.start()
        self._queue.put(ids)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = list(first), False
            while len(batch) < MARK_BATCH:
                try:
                    more = self._queue.get(timeout=MARK_LINGER_SECONDS)
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch += more
            try:
                self.ledger.mark_published(batch)
            except FifoqError as exc:  # not fatal: the relay looks at them again
                log.warning("could not record %d publish confirms: %s", len(batch), exc)
            if stop:
                return

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(10)


class Emitter:
    """The backend's entry point. Thread-safe.

    emit_event returns once every subscriber's message is in the ledger and, when the broker is
    reachable, confirmed by it. If the broker is down or slow, messages stay `pending` in the
    ledger and the relay publishes them later, in order; only bad input or a ledger failure before
    the messages are stored raises (and then retrying with the same idempotency key is safe).
    """

    def __init__(
        self, settings: Settings, ledger: Ledger, subscriptions: Subscriptions, publisher: Publisher | None = None
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.subscriptions = subscriptions
        self.publisher = publisher or Publisher(settings, name="fifoq-backend")
        self._qtypes: dict[str, QueueType] = {}
        self._lanes: dict[str, int] = {}  # as stored on first sight, which wins over a later declaration
        self._marker = _Marker(ledger)
        self._pool: ThreadPoolExecutor | None = None

    # -- declaring ---------------------------------------------------------------------------
    def declare(self) -> None:
        """Persist every actor's declaration and create its queues (dynamic queue creation).

        The broker being down is not fatal: queues are declared again before each publish.
        """
        for spec in self.subscriptions.specs.values():
            self._declare_actor(spec)

    def _declare_actor(self, spec: ActorSpec) -> None:
        subs = self.subscriptions.subscriptions_of(spec.name)
        keyed = any(sub.ordering_key for sub in subs)
        doc = self.ledger.register_actor(
            spec.name,
            queue_type=spec.queue_type.value,
            schema=spec.schema,
            subscriptions=[sub.to_doc() for sub in subs],
            description=spec.description,
            lanes=spec.lanes or (self.settings.lanes if keyed else 1),
        )
        self._lanes[spec.name] = int(doc.get("lanes", 1))
        self._qtypes[spec.name] = QueueType(doc["queue_type"])
        for lane in range(self._lanes[spec.name]):
            try:
                self.publisher.declare_actor(spec.name, self._qtypes[spec.name], lane)
            except BrokerUnavailable as exc:
                log.warning("actor=%s queue not declared yet, broker unavailable: %s", spec.name, exc)
                return
            except BrokerRefused as exc:
                # Wrong permissions or a queue declared with other arguments: an operator's problem,
                # not the caller's. The messages are stored all the same and the relay retries.
                log.error("actor=%s queue declaration refused by the broker: %s", spec.name, exc)
                return

    # -- emitting ----------------------------------------------------------------------------
    def emit_event(self, name: str, payload: Any, *, correlation_id: str | None = None,
                   idempotency_key: str | None = None) -> list[str]:
        """Store and publish one message per subscriber; returns their ids (empty: no subscriber).

        `idempotency_key`: the event's id; emitting again with the same key returns the same ids
        and stores nothing new. Raises ValidationError / SchemaViolation / PayloadTooLarge before
        writing anything, StoreError if the ledger fails before the messages are stored.
        """
        return self.emit_many([Event(name, payload, correlation_id, idempotency_key)])[0]

    def emit_many(self, events: Iterable[Event | tuple[str, Any]]) -> list[list[str]]:
        """Batch form: validates all events first, then stores them (one allocation per lane, one
        insert) and publishes them with pipelined confirms. Returns the message ids of each
        event, in order."""
        checked = [self._check(e if isinstance(e, Event) else Event(*e)) for e in events]
        fresh = iter(new_event_ids(sum((e.correlation_id is None) + (e.idempotency_key is None) for e in checked)))
        plans: list[_Planned] = []
        for event in checked:
            if event.correlation_id is None:
                event = Event(event.name, event.payload, next(fresh), event.idempotency_key)
            targets = []
            for route in self.subscriptions.routes(event.name, event.payload):
                if route.spec.name not in self._qtypes:
                    self._declare_actor(route.spec)
                lane = lane_of(route.key, self._lanes.get(route.spec.name, 1))
                targets.append((route.spec.name, lane, route.key))
            plans.append(_Planned(event, event.idempotency_key or next(fresh), targets))
        stored = self._store(plans)
        try:
            self._publish([d for docs in stored for d in docs if d.get("status") == Status.PENDING.value])
        except Exception:
            log.exception("publish failed after the messages were stored; the relay will publish them")
        return [[d["_id"] for d in docs] for docs in stored]

    def _check(self, event: Event) -> Event:
        name = event.name
        if not isinstance(name, str) or not EVENT_NAME_RE.match(name) or len(name) > MAX_EVENT_NAME:
            raise ValidationError(f"invalid event name {str(name)[:80]!r}: dot-separated words of letters, digits, '_' or '-'")
        cid = event.correlation_id
        if cid is not None and (not isinstance(cid, str) or not cid or len(cid) > MAX_CORRELATION_ID):
            raise ValidationError(f"correlation_id must be a non-empty string of at most {MAX_CORRELATION_ID} characters")
        key = event.idempotency_key
        if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY
                                or any(ord(c) < 32 for c in key)):
            raise ValidationError(f"idempotency_key must be a non-empty printable string of at most {MAX_IDEMPOTENCY_KEY} characters")
        payload = normalise(event.payload, self.settings.max_payload_bytes)
        problems = []
        for route in self.subscriptions.routes(name, payload):  # also checks ordering keys
            for err in schema_errors(route.spec.schema, payload):
                problems.append(dict(err, actor=route.spec.name))
        if problems:
            first = problems[0]
            raise SchemaViolation(
                f"payload of {name!r} rejected by actor {first['actor']!r} at {first['path']}: {first['message']}",
                problems,
            )
        return Event(name, payload, cid, key)  # no correlation id: emit_many gives it one

    # -- storing -----------------------------------------------------------------------------
    def _allocate(self, counts: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """First sequence number of each lane's range, in one round trip (lanes concurrently)."""
        items = list(counts.items())
        if len(items) <= 1:
            return {al: self.ledger.allocate(al[0], n, al[1]) for al, n in items}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fifoq-allocate")
        futures = {al: self._pool.submit(self.ledger.allocate, al[0], n, al[1]) for al, n in items}
        return {al: f.result() for al, f in futures.items()}

    def _store(self, plans: Sequence[_Planned]) -> list[list[dict[str, Any]]]:
        counts: dict[tuple[str, int], int] = {}
        for plan in plans:
            for actor, lane, _key in plan.targets:
                counts[(actor, lane)] = counts.get((actor, lane), 0) + 1
        if not counts:
            return [[] for _ in plans]
        next_seq = self._allocate(counts)
        out: list[list[dict[str, Any]]] = []
        flat: list[dict[str, Any]] = []
        for plan in plans:
            docs = []
            for actor, lane, key in plan.targets:
                seq = next_seq[(actor, lane)]
                next_seq[(actor, lane)] = seq + 1
                docs.append(self.ledger.new_message(actor, seq, plan.event.name, plan.event.payload,
                                                    plan.event.correlation_id, lane, key, plan.event_id))
            flat.extend(docs)
            out.append(docs)
        final = self._insert(flat)
        return [[final[(d["actor"], d["event_id"])] for d in docs] for docs in out]

    def _insert(self, docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Store `docs` in order; returns each (actor, event_id)'s stored message.

        A refused or unknown insert is resolved by looking at what is there: a message of the same
        event already stored (a retried emit) is the answer, and our number is given back (closed
        at once); a number taken by a gap's tombstone (we were slower than FIFOQ_GAP_GRACE) is
        replaced by a new one at the end of its lane, with every later message of ours in that lane,
        so that the lane keeps this emit's order."""
        final: dict[tuple[str, str], dict[str, Any]] = {}
        pending = docs
        for _ in range(SEQ_RETRIES):
            try:
                self.ledger.insert(pending)
                rest: list[dict[str, Any]] = []
            except DuplicateKey as exc:
                cut = min(exc.failed) if exc.failed else 0
                for d in pending[:cut]:
                    final[(d["actor"], d["event_id"])] = d
                rest = pending[cut:]
            except OutcomeUnknown as exc:
                log.warning("storing %d messages: outcome unknown (%s), reading back", len(pending), exc)
                rest = pending
            else:
                for d in pending:
                    final[(d["actor"], d["event_id"])] = d
                return final
            pending = self._resolve(rest, final)
            if not pending:
                return final
        raise StoreError("could not store messages: sequence numbers kept being taken")

    def _resolve(self, rest: list[dict[str, Any]], final: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
        """See _insert. Returns what still has to be inserted (renumbered where needed)."""
        prior = self.ledger.stored_events((d["actor"], d["event_id"]) for d in rest)
        taken = {d["_id"] for d in self.ledger.by_ids([d["_id"] for d in rest])}
        renumber: set[tuple[str, int]] = set()
        again: list[dict[str, Any]] = []
        abandoned: dict[tuple[str, int], list[int]] = {}
        for d in rest:
            lane = (d["actor"], d["lane"])
            found = prior.get((d["actor"], d["event_id"]))
            if found is not None:
                final[(d["actor"], d["event_id"])] = found
                if found["_id"] != d["_id"] and d["_id"] not in taken:
                    abandoned.setdefault(lane, []).append(d["seq"])
                continue
            if d["_id"] in taken or lane in renumber:
                if d["_id"] not in taken:
                    abandoned.setdefault(lane, []).append(d["seq"])
                renumber.add(lane)
            again.append(d)
        counts: dict[tuple[str, int], int] = {}
        for d in again:
            if (d["actor"], d["lane"]) in renumber:
                counts[(d["actor"], d["lane"])] = counts.get((d["actor"], d["lane"]), 0) + 1
        fresh = self._allocate(counts) if counts else {}
        out = []
        for d in again:
            key = (d["actor"], d["lane"])
            if key in fresh:
                d = self.ledger.resequenced(d, fresh[key])
                fresh[key] += 1
            out.append(d)
        for (gap_actor, gap_lane), seqs in abandoned.items():
            # Numbers we reserved and will not use: closed now rather than after a grace period.
            self.ledger.close_gaps(gap_actor, gap_lane, seqs, "sequence number given back by its emitter (event already stored)")
        if counts:
            log.warning("re-allocated sequence numbers for %d messages after a gap tombstone", sum(counts.values()))
        return out

    def _publish(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        envs = [Envelope(d["_id"], d["actor"], d["seq"], d["event"], d.get("lane", 0)) for d in docs]
        try:
            confirmed = self.publisher.publish(envs, self._qtypes)
        except FifoqError as exc:
            log.warning("publish failed, %d messages left to the relay: %s", len(docs), exc)
            return
        self._marker.add([d["_id"] for d in docs if d["_id"] in confirmed])
        if len(confirmed) < len(docs):
            log.warning("%d messages not confirmed, left to the relay", len(docs) - len(confirmed))

    def flush(self) -> None:
        """Wait until the publish confirms of past emits are recorded in the ledger."""
        self._marker.close()

    def close(self) -> None:
        self._marker.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.publisher.close()
