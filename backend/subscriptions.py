"""Subscriptions: which actors receive which events.

Patterns follow RabbitMQ topic-exchange semantics (`*` is exactly one word, `#` zero or more),
filters compare payload fields by dotted path (like a headers exchange, on the payload), and an
actor may declare a JSON Schema for the payloads it accepts.

Fan-out is computed here, in the application, and not by a topic exchange: each subscriber must
get its own ledger message (own id, own sequence number) before anything is published.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from backend.errors import ValidationError
from backend.values import ACTOR_NAME_RE, EVENT_NAME_RE, QueueType

log = logging.getLogger(__name__)

_MISSING = object()
MAX_KEY = 200
MAX_LANES = 64


def topic_matches(pattern: str, name: str) -> bool:
    """RabbitMQ topic matching: `order.*` matches `order.paid`, `order.#` also `order` and `order.a.b`."""
    return _match(pattern.split("."), name.split("."))


def _match(pat: list[str], words: list[str]) -> bool:
    if not pat:
        return not words
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def field_value(payload: Any, path: str) -> Any:
    cur = payload
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def validate_actor_name(actor: Any) -> str:
    if not isinstance(actor, str) or not ACTOR_NAME_RE.match(actor):
        raise ValidationError(
            "actor names are 1-63 characters: lowercase letters, digits, '_' or '-', starting with a letter or digit"
        )
    return actor


def validate_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern or len(pattern) > 255:
        raise ValidationError(f"invalid event pattern {pattern!r}")
    for word in pattern.split("."):
        if word in ("*", "#"):
            continue
        if not EVENT_NAME_RE.match(word):
            raise ValidationError(f"invalid event pattern {pattern!r}: bad word {word!r}")
    return pattern


@dataclass(frozen=True)
class Subscription:
    """`actor` receives events matching any of `events`, when every `where` field matches.

    `where` maps a dotted payload path to a value, or to a list of accepted values.
    `ordering_key` is a dotted payload path (e.g. "dossier_id"): messages with the same key are
    processed in order, messages with different keys do not wait for each other, and a failure
    blocks only its key.
    """

    actor: str
    events: tuple[str, ...]
    where: Mapping[str, Any] = field(default_factory=dict)
    ordering_key: str | None = None

    def matches(self, event: str, payload: Any) -> bool:
        if not any(topic_matches(p, event) for p in self.events):
            return False
        for path, expected in self.where.items():
            value = field_value(payload, path)
            if value is _MISSING:
                return False
            if isinstance(expected, list):
                if value not in expected:
                    return False
            elif value != expected:
                return False
        return True

    def to_doc(self) -> dict[str, Any]:
        return {"events": list(self.events), "where": dict(self.where), "ordering_key": self.ordering_key}

    def key_of(self, payload: Any) -> str | None:
        """The message's ordering key, or None when the subscription has none.

        Raises ValidationError when the payload lacks the field or it is not a string or number."""
        if self.ordering_key is None:
            return None
        value = field_value(payload, self.ordering_key)
        if value is _MISSING or isinstance(value, (dict, list, bool)) or value is None:
            raise ValidationError(
                f"actor {self.actor!r} orders by {self.ordering_key!r}: the payload needs it as a string or a number"
            )
        key = str(value)
        if not key or len(key) > MAX_KEY:
            raise ValidationError(f"ordering key {self.ordering_key!r} must be 1-{MAX_KEY} characters")
        return key


@dataclass(frozen=True)
class ActorSpec:
    """How an actor is declared: its schema (optional) and its queue type."""

    name: str
    schema: dict[str, Any] | None = None
    queue_type: QueueType = QueueType.QUORUM
    description: str = ""
    lanes: int | None = None  # None: FIFOQ_LANES if the actor has an ordering key, else 1


@dataclass(frozen=True)
class Route:
    """Where one event goes for one subscriber: the actor, and the message's ordering key."""

    spec: ActorSpec
    key: str | None


def lane_of(key: str | None, lanes: int) -> int:
    """The lane (queue) of an ordering key: crc32 modulo the lane count, stable across processes
    and restarts (unlike Python's hash()), computed here rather than by a consistent-hash exchange,
    which may move keys when the broker restarts."""
    if key is None or lanes <= 1:
        return 0
    return zlib.crc32(key.encode("utf-8")) % lanes


def schema_errors(schema: Mapping[str, Any] | None, payload: Any) -> list[dict[str, str]]:
    """Every violation, with a JSON path ("$.customer.email") and a message."""
    if not schema:
        return []
    validator = Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append({"path": path, "message": err.message})
    return out


class Subscriptions:
    """The backend's declarations, in memory; `Emitter.declare` persists them and creates queues."""

    def __init__(self) -> None:
        self._actors: dict[str, ActorSpec] = {}
        self._subs: list[Subscription] = []

    def actor(
        self,
        name: str,
        *,
        schema: dict[str, Any] | None = None,
        queue_type: QueueType | str | None = None,
        description: str = "",
        default_queue_type: QueueType = QueueType.QUORUM,
        lanes: int | None = None,
    ) -> ActorSpec:
        """Declare an actor. `lanes`: how many queues an actor with ordering keys spreads its keys
        over (bounded, whatever the number of keys); FIFOQ_LANES when not given."""
        validate_actor_name(name)
        if lanes is not None and (not isinstance(lanes, int) or not 1 <= lanes <= MAX_LANES):
            raise ValidationError(f"lanes must be an integer from 1 to {MAX_LANES}")
        if schema is not None:
            try:
                Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValidationError(f"actor {name!r}: invalid JSON Schema: {exc.message}") from None
        try:
            qtype = QueueType(queue_type) if queue_type else default_queue_type
        except ValueError:
            raise ValidationError(f"queue_type must be 'quorum' or 'classic', not {queue_type!r}") from None
        spec = ActorSpec(name, schema, qtype, description, lanes)
        self._actors[name] = spec
        return spec

    def subscribe(
        self,
        actor: str,
        events: str | Iterable[str],
        where: Mapping[str, Any] | None = None,
        ordering_key: str | None = None,
    ) -> Subscription:
        if actor not in self._actors:
            self.actor(actor)
        pats = (events,) if isinstance(events, str) else tuple(events)
        if not pats:
            raise ValidationError("a subscription needs at least one event pattern")
        if ordering_key is not None and (
            not isinstance(ordering_key, str) or not all(EVENT_NAME_RE.match(p) for p in ordering_key.split("."))
        ):
            raise ValidationError(f"invalid ordering key path {ordering_key!r}: dotted field names")
        sub = Subscription(actor, tuple(validate_pattern(p) for p in pats), dict(where or {}), ordering_key)
        self._subs.append(sub)
        return sub

    @property
    def specs(self) -> dict[str, ActorSpec]:
        return dict(self._actors)

    def subscriptions_of(self, actor: str) -> list[Subscription]:
        return [s for s in self._subs if s.actor == actor]

    def routes(self, event: str, payload: Any) -> list[Route]:
        """One route per receiving actor (its first matching subscription decides the key)."""
        seen: dict[str, Route] = {}
        for sub in self._subs:
            if sub.actor not in seen and sub.matches(event, payload):
                seen[sub.actor] = Route(self._actors[sub.actor], sub.key_of(payload))
        return list(seen.values())
