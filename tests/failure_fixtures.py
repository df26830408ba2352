"""An incident for the failures board: 5 failed messages over 3 actors, all one kind of failure.

`tour.booked` fans out to payment (ordering key `booking_id`: a failure blocks only its booking),
invoicing and loyalty. The provider needs a currency; three bookings come without one, so the
shared handler raises MissingCurrency from the same line for each: payment blocks three keys,
invoicing and loyalty block on their first one (the later bookings wait behind it). loyalty's
schema accepts pounds only, so a patch adding `"currency": "EUR"` is refused there.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend.app import Backend
from backend.values import Message
from connectors.registry import Registry
from connectors.runtime import Runtime

ACTORS = ("payment", "invoicing", "loyalty")
BOOKING = {"type": "object", "required": ["booking_id", "amount"],
           "properties": {"booking_id": {"type": "string"}, "amount": {"type": "number"}, "currency": {"type": "string"}}}
# The loyalty programme is British: it credits points for bookings in pounds only.
LOYALTY = {"type": "object", "required": ["booking_id", "amount"],
           "properties": {"booking_id": {"type": "string"}, "amount": {"type": "number"}, "currency": {"enum": ["GBP"]}}}
ADD_CURRENCY = [{"op": "add", "path": "/currency", "value": "EUR"}]


class MissingCurrency(Exception):
    """The provider refuses a booking without a currency (bad data: blocks until repaired)."""


@dataclass
class Provider:
    """The external system behind the three actors: records what it accepted, in order."""

    accepted: dict[str, list[str]] = field(default_factory=lambda: {a: [] for a in ACTORS})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, actor: str):
        def settle(message: Message) -> None:
            p = message.payload
            if "currency" not in p:
                raise MissingCurrency(f"booking {p['booking_id']} of {p['amount']} has no currency")
            with self.lock:
                self.accepted[actor].append(p["booking_id"])

        return settle

    def registry(self) -> Registry:
        reg = Registry()
        for actor in ACTORS:
            reg.register(actor, self.handler(actor))
        return reg


@dataclass
class Incident:
    provider: Provider
    failed: dict[str, list[str]]  # actor -> failed message ids

    @property
    def failed_ids(self) -> list[str]:
        return [i for ids in self.failed.values() for i in ids]

    def run(self, backend: Backend) -> None:
        Runtime(backend.settings, backend.ledger, self.provider.registry()).run(drain=True, timeout=120)


def declare(backend: Backend) -> None:
    backend.subscriptions.actor("payment", schema=BOOKING, description="charges the booking", lanes=2)
    backend.subscriptions.subscribe("payment", "tour.booked", ordering_key="booking_id")
    backend.subscriptions.actor("invoicing", schema=BOOKING, description="invoices the booking")
    backend.subscriptions.subscribe("invoicing", "tour.booked")
    backend.subscriptions.actor("loyalty", schema=LOYALTY, description="credits loyalty points")
    backend.subscriptions.subscribe("loyalty", "tour.booked")
    backend.declare()


def book(backend: Backend, n: int, currency: bool) -> list[str]:
    payload: dict[str, Any] = {"booking_id": f"B-{n:04d}", "amount": 100 + n}
    if currency:
        payload["currency"] = "GBP"
    return backend.emit_event("tour.booked", payload, correlation_id=f"B-{n:04d}")


@pytest.fixture
def incident(backend: Backend) -> Incident:
    """Given booking 1 with a currency and bookings 2-4 without, when the connectors run, then
    5 messages fail with one fingerprint: payment's keys B-0002..B-0004, invoicing's and loyalty's
    B-0002 (their B-0003 and B-0004 wait behind)."""
    declare(backend)
    book(backend, 1, True)
    for n in (2, 3, 4):
        book(backend, n, False)
    state = Incident(Provider(), {})
    state.run(backend)
    for doc in backend.ledger.failures():
        state.failed.setdefault(doc["actor"], []).append(doc["_id"])
    assert {a: len(ids) for a, ids in state.failed.items()} == {"payment": 3, "invoicing": 1, "loyalty": 1}
    return state
