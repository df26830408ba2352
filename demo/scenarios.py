"""The demo's actors, subscriptions and event stream (the scenarios of the product brief).

- Tour booking: `tour.booked` fans out to payment, notification and availability.
- E-commerce orders: `order.created`, then `order.paid` or `order.cancelled` for the same order
  id; shipping subscribes `order.*`, analytics `order.#`, inventory `order.created`, payment
  `order.paid` and `order.cancelled` (charge or refund).
- A two-person chat: `chat.message` goes to chat-alice when `to` is alice and to chat-bob when
  `to` is bob (a payload filter), one numbered line after the other.
- Bad data: one booking (BAD_BOOKING, the 4th by default) is in a currency the payment provider
  does not support ("XXX"). The payment schema accepts it (three capital letters), so the event is
  stored and delivered; the payment connector refuses it and the payment actor blocks with the
  next payments waiting behind it. The operator sets "currency" to "EUR" in the console, replays,
  and payment drains in order.

`Scenario` is a deterministic, endless event stream (seeded); `Player` emits it at a given rate.
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from backend import backoff
from backend.app import Backend
from backend.errors import FifoqError, StoreError, ValidationError
from backend.subscriptions import Subscriptions

log = logging.getLogger(__name__)

ACTORS = ("payment", "notification", "availability", "shipping", "analytics", "inventory", "chat-alice", "chat-bob")
BAD_BOOKING = 4  # the 4th booking: about 4 s into the demo at the default rate
BAD_CURRENCY = "XXX"  # passes the schema, refused by the payment provider (connectors.examples)
DEFAULT_RATE = 3.0  # events per second

_MONEY = {"type": "number", "minimum": 0}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$"}
_CUSTOMER = {
    "type": "object",
    "required": ["name", "email"],
    "properties": {"name": {"type": "string", "minLength": 1}, "email": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$"}},
}
_ITEMS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["sku", "qty"],
        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "payment": {
        "type": "object",
        "required": ["amount", "currency"],
        "properties": {"amount": _MONEY, "currency": _CURRENCY, "booking_id": {"type": "string"}, "order_id": {"type": "string"}},
        "anyOf": [{"required": ["booking_id"]}, {"required": ["order_id"]}],
    },
    "notification": {"type": "object", "required": ["booking_id", "customer"], "properties": {"customer": _CUSTOMER}},
    "availability": {
        "type": "object",
        "required": ["tour", "date", "seats"],
        "properties": {"tour": {"type": "string"}, "date": {"type": "string"}, "seats": {"type": "integer", "minimum": 1}},
    },
    "shipping": {"type": "object", "required": ["order_id"]},
    "inventory": {"type": "object", "required": ["order_id", "items"], "properties": {"items": _ITEMS}},
    "chat-alice": {
        "type": "object",
        "required": ["conversation", "n", "from", "to", "text"],
        "properties": {"n": {"type": "integer", "minimum": 1}, "text": {"type": "string"}},
    },
}
SCHEMAS["chat-bob"] = SCHEMAS["chat-alice"]

DESCRIPTIONS = {
    "payment": "Payment provider: charges bookings and paid orders, refunds cancelled orders",
    "notification": "E-mail sender: booking confirmations",
    "availability": "Tour operator: holds seats",
    "shipping": "Warehouse: prepares, ships or stops orders",
    "analytics": "Analytics: counts every order event",
    "inventory": "ERP: reserves stock for new orders (answers 503 now and then)",
    "chat-alice": "Alice's chat client",
    "chat-bob": "Bob's chat client",
}


def declare(subscriptions: Subscriptions) -> Subscriptions:
    """Declare the demo actors (with their JSON Schemas) and subscriptions."""
    for actor in ACTORS:
        subscriptions.actor(actor, schema=SCHEMAS.get(actor), description=DESCRIPTIONS[actor])
    for actor in ("payment", "notification", "availability"):
        subscriptions.subscribe(actor, "tour.booked")
    subscriptions.subscribe("payment", ["order.paid", "order.cancelled"])
    subscriptions.subscribe("shipping", "order.*")
    subscriptions.subscribe("analytics", "order.#")
    subscriptions.subscribe("inventory", "order.created")
    subscriptions.subscribe("chat-alice", "chat.message", where={"to": "alice"})
    subscriptions.subscribe("chat-bob", "chat.message", where={"to": "bob"})
    return subscriptions


# -- the event stream ---------------------------------------------------------------------------
TOURS = (("Lisbon by tram", 42.0), ("Sintra palaces", 89.0), ("Porto wine cellars", 65.0), ("Douro valley cruise", 120.0))
CUSTOMERS = (("Ana Silva", "ana@example.com"), ("Tom Becker", "tom@example.org"), ("Mei Lin", "mei@example.net"),
             ("Omar Haddad", "omar@example.com"), ("Julie Martin", "julie@example.fr"))
PRODUCTS = (("SKU-TSHIRT", 19.9), ("SKU-MUG", 12.5), ("SKU-POSTER", 8.0), ("SKU-GUIDEBOOK", 24.0))
CHAT = (
    "Hi Bob, are you coming on the Sintra tour on Saturday?",
    "Hi Alice! Yes, I just booked it.",
    "Great. Meeting point is Rossio station, 9:00.",
    "Perfect. Should I bring anything?",
    "Water and good shoes, there is a lot of walking.",
    "Noted. Lunch there or picnic?",
    "Picnic! I'll bring sandwiches.",
    "Then I'll bring fruit and coffee.",
    "Deal. See you Saturday!",
    "See you!",
)
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")


@dataclass
class _Order:
    order_id: str
    customer: dict[str, str]
    items: list[dict[str, Any]]
    amount: float
    currency: str


@dataclass
class Scenario:
    """A deterministic, endless stream of (event name, payload): the same seed gives the same
    stream. Order events of one order come in lifecycle order; chat lines alternate."""

    seed: int | None = None
    bad_booking: int = BAD_BOOKING  # 0: no bad booking
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        rng = self._rng
        bookings = itertools.count(1)
        orders = itertools.count(1)
        chat_lines = itertools.count(1)
        open_orders: list[_Order] = []
        while True:
            kind = rng.choices(("booking", "order", "chat"), weights=(3, 4, 3))[0]
            if kind == "booking":
                yield "tour.booked", self._booking(next(bookings))
            elif kind == "order":
                if len(open_orders) < 2 or (len(open_orders) < 4 and rng.random() < 0.4):
                    order = self._order(next(orders))
                    open_orders.append(order)
                    yield "order.created", {
                        "order_id": order.order_id, "customer": order.customer, "items": order.items,
                        "amount": order.amount, "currency": order.currency,
                    }
                else:
                    order = open_orders.pop(rng.randrange(len(open_orders)))
                    base = {"order_id": order.order_id, "amount": order.amount, "currency": order.currency}
                    if rng.random() < 0.8:
                        yield "order.paid", dict(base, method=rng.choice(("card", "paypal", "transfer")))
                    else:
                        yield "order.cancelled", dict(base, reason=rng.choice(("customer request", "out of stock")))
            else:
                n = next(chat_lines)
                sender, receiver = ("alice", "bob") if n % 2 else ("bob", "alice")
                yield "chat.message", {
                    "conversation": "alice-bob", "n": n, "from": sender, "to": receiver,
                    "text": CHAT[(n - 1) % len(CHAT)],
                }

    def take(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        return list(itertools.islice(self.events(), count))

    def _booking(self, n: int) -> dict[str, Any]:
        rng = self._rng
        tour, price = rng.choice(TOURS)
        name, email = rng.choice(CUSTOMERS)
        seats = rng.randint(1, 4)
        currency = BAD_CURRENCY if n == self.bad_booking else "EUR"
        return {
            "booking_id": f"B-{n:04d}", "tour": tour, "date": f"2025-07-{rng.randint(1, 28):02d}", "seats": seats,
            "customer": {"name": name, "email": email}, "amount": round(price * seats, 2), "currency": currency,
        }

    def _order(self, n: int) -> _Order:
        rng = self._rng
        name, email = rng.choice(CUSTOMERS)
        picked = rng.sample(PRODUCTS, rng.randint(1, 3))
        quantities = [rng.randint(1, 3) for _ in picked]
        items = [{"sku": sku, "qty": qty} for (sku, _), qty in zip(picked, quantities, strict=True)]
        amount = round(sum(price * qty for (_, price), qty in zip(picked, quantities, strict=True)), 2)
        return _Order(f"O-{n:04d}", {"name": name, "email": email}, items, amount, rng.choice(CURRENCIES))


def correlation_of(name: str, payload: dict[str, Any]) -> str | None:
    """Events of one booking, order or conversation share a correlation id (searchable in the console)."""
    return payload.get("booking_id") or payload.get("order_id") or payload.get("conversation")


class Player:
    """Emits a Scenario through a Backend at `rate` events per second (0: as fast as possible).

    >>> Player(backend, seed=7, count=50, rate=0).play()   # 50 events, then returns
    """

    def __init__(self, backend: Backend, *, seed: int | None = None, rate: float = DEFAULT_RATE,
                 count: int | None = None, bad_booking: int = BAD_BOOKING) -> None:
        if rate < 0:
            raise ValidationError("rate must be >= 0")
        if count is not None and count < 0:
            raise ValidationError("count must be >= 0")
        self.backend = backend
        self.scenario = Scenario(seed, bad_booking)
        self.rate = rate
        self.count = count
        self.emitted = 0
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def play(self, stop: threading.Event | None = None) -> int:
        """Emit until `count` events were emitted or `stop` is set; returns how many were emitted."""
        stop = stop or self.stop_event
        interval = 1.0 / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        events = self.scenario.events()
        name, payload = next(events)
        failures = 0  # emits refused in a row because the ledger is down
        while not stop.is_set() and (self.count is None or self.emitted < self.count):
            try:
                ids = self.backend.emit_event(name, payload, correlation_id=correlation_of(name, payload))
            except StoreError as exc:  # the ledger is down: nothing was stored, try the same event again
                delay = backoff.LEDGER_RETRY.delay(failures)
                failures += 1
                log.warning("event=%s not emitted, ledger unavailable (%s): retrying in %.1fs", name, exc, delay)
                stop.wait(delay)
                continue
            except FifoqError as exc:  # refused (schema...): a bug in the scenario, skip the event
                log.error("event=%s refused: %s", name, exc)
            else:
                log.debug("event=%s emitted to %d actors: %s", name, len(ids), ", ".join(ids))
            failures = 0
            self.emitted += 1
            name, payload = next(events)
            if interval:
                next_at = max(next_at + interval, time.monotonic() - 1.0)  # catch up at most 1 s
                stop.wait(max(0.0, next_at - time.monotonic()))
        return self.emitted

    def start(self) -> threading.Thread:
        """Play in a background thread; `stop()` ends it."""
        self._thread = threading.Thread(target=self.play, name="demo-player", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
