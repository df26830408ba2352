"""emit_event: validate, fan out to subscribers, store one message each, publish with confirms."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from backend.broker import BrokerRefused, Publisher
from backend.errors import BrokerUnavailable, FifoqError, SchemaViolation, ValidationError
from backend.ledger import Ledger
from backend.payloads import normalise
from backend.settings import Settings
from backend.store import DuplicateKey
from backend.subscriptions import ActorSpec, Subscriptions, lane_of, schema_errors
from backend.values import EVENT_NAME_RE, MAX_EVENT_NAME, Envelope, QueueType

log = logging.getLogger(__name__)

MAX_CORRELATION_ID = 200
SEQ_RETRIES = 5


@dataclass(frozen=True)
class Event:
    name: str
    payload: Any
    correlation_id: str | None = None


class Emitter:
    """The backend's entry point. Thread-safe.

    emit_event returns once every subscriber's message is in the ledger and, when the broker is
    reachable, confirmed by it. If the broker is down or slow, messages stay `pending` in the
    ledger and the relay publishes them later, in order; only a ledger failure raises.
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

    # -- declaring ---------------------------------------------------------------------------
    def declare(self) -> None:
        """Persist every actor's declaration and create its queue (dynamic queue creation).

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
        try:
            self.publisher.declare_actor(spec.name, self._qtypes[spec.name])
        except BrokerUnavailable as exc:
            log.warning("actor=%s queue not declared yet, broker unavailable: %s", spec.name, exc)
        except BrokerRefused as exc:
            # Wrong permissions or a queue declared with other arguments: an operator's problem,
            # not the caller's. The messages are stored all the same and the relay retries.
            log.error("actor=%s queue declaration refused by the broker: %s", spec.name, exc)

    # -- emitting ----------------------------------------------------------------------------
    def emit_event(self, name: str, payload: Any, *, correlation_id: str | None = None) -> list[str]:
        """Store and publish one message per subscriber; returns their ids (empty: no subscriber).

        Raises ValidationError / SchemaViolation / PayloadTooLarge before writing anything,
        StoreError if the ledger write fails.
        """
        return self.emit_many([Event(name, payload, correlation_id)])[0]

    def emit_many(self, events: Iterable[Event | tuple[str, Any]]) -> list[list[str]]:
        """Batch form: validates all events first, then stores and publishes them with pipelined
        confirms. Returns the message ids of each event, in order."""
        checked = [self._check(e if isinstance(e, Event) else Event(*e)) for e in events]
        plans: list[tuple[Event, list[tuple[str, int, str | None]]]] = []
        for event in checked:
            targets = []
            for route in self.subscriptions.routes(event.name, event.payload):
                if route.spec.name not in self._qtypes:
                    self._declare_actor(route.spec)
                lane = lane_of(route.key, self._lanes.get(route.spec.name, 1))
                targets.append((route.spec.name, lane, route.key))
            plans.append((event, targets))
        docs_per_event = self._store(plans)
        self._publish([d for docs in docs_per_event for d in docs])
        return [[d["_id"] for d in docs] for docs in docs_per_event]

    def _check(self, event: Event) -> Event:
        name = event.name
        if not isinstance(name, str) or not EVENT_NAME_RE.match(name) or len(name) > MAX_EVENT_NAME:
            raise ValidationError(f"invalid event name {str(name)[:80]!r}: dot-separated words of letters, digits, '_' or '-'")
        cid = event.correlation_id
        if cid is not None and (not isinstance(cid, str) or not cid or len(cid) > MAX_CORRELATION_ID):
            raise ValidationError(f"correlation_id must be a non-empty string of at most {MAX_CORRELATION_ID} characters")
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
        return Event(name, payload, cid or uuid.uuid4().hex)

    def _store(self, plans: Sequence[tuple[Event, list[tuple[str, int, str | None]]]]) -> list[list[dict[str, Any]]]:
        # Allocate each (actor, lane)'s sequence numbers in one atomic increment, in emission order.
        wanted: dict[tuple[str, int], int] = {}
        for _event, targets in plans:
            for actor, lane, _key in targets:
                wanted[(actor, lane)] = wanted.get((actor, lane), 0) + 1
        next_seq = {al: self.ledger.allocate(al[0], n, al[1]) for al, n in wanted.items()}
        out: list[list[dict[str, Any]]] = []
        flat: list[dict[str, Any]] = []
        for event, targets in plans:
            docs = []
            for actor, lane, key in targets:
                seq = next_seq[(actor, lane)]
                next_seq[(actor, lane)] = seq + 1
                docs.append(self.ledger.new_message(actor, seq, event.name, event.payload, event.correlation_id, lane, key))
            flat.extend(docs)
            out.append(docs)
        self._insert(flat)
        return out

    def _insert(self, docs: list[dict[str, Any]]) -> None:
        for _ in range(SEQ_RETRIES):
            try:
                self.ledger.insert(docs)
                return
            except DuplicateKey:
                # A connector closed one of our sequence numbers as a gap (we were slower than
                # FIFOQ_GAP_GRACE): store what is missing under fresh numbers, still in order.
                stored = {d["_id"] for d in self.ledger.by_ids([d["_id"] for d in docs])}
                docs = [d for d in docs if d["_id"] not in stored]
                counts: dict[tuple[str, int], int] = {}
                for d in docs:
                    counts[(d["actor"], d["lane"])] = counts.get((d["actor"], d["lane"]), 0) + 1
                fresh = {al: self.ledger.allocate(al[0], n, al[1]) for al, n in counts.items()}
                for d in docs:
                    d["seq"] = fresh[(d["actor"], d["lane"])]
                    fresh[(d["actor"], d["lane"])] += 1
                log.warning("re-allocated sequence numbers for %d messages after a gap tombstone", len(docs))
        raise FifoqError("could not store messages: sequence numbers kept being taken")

    def _publish(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        envs = [Envelope(d["_id"], d["actor"], d["seq"], d["event"], d.get("lane", 0)) for d in docs]
        try:
            confirmed = self.publisher.publish(envs, self._qtypes)
        except FifoqError as exc:
            log.warning("publish failed, %d messages left to the relay: %s", len(docs), exc)
            return
        self.ledger.mark_queued([d["_id"] for d in docs if d["_id"] in confirmed])
        if len(confirmed) < len(docs):
            log.warning("%d messages not confirmed, left to the relay", len(docs) - len(confirmed))

    def close(self) -> None:
        self.publisher.close()
