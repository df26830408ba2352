"""Example connectors used by the demo: each one stands for an external system.

They log what the external system would receive, with the actor and the message id. Two of them
show the two ways a handler fails:

- `payment` raises PaymentRefused on data the provider refuses although the actor's schema
  accepts it (a currency it does not support, e.g. "XXX"): not worth retrying, so the actor
  blocks until an operator fixes the payload in the console and replays it.
- `inventory` raises TransientError on the first attempt of about one message in five (the ERP
  "answered 503"): the runtime retries the same message in place and it succeeds.
"""
from __future__ import annotations

import logging
import zlib

from backend.errors import TransientError
from backend.values import Message
from connectors.registry import OnInterrupted, Registry

log = logging.getLogger(__name__)

registry = Registry()

SUPPORTED_CURRENCIES = ("EUR", "USD", "GBP", "CHF")


class PaymentRefused(Exception):
    """The payment provider refused the request (bad data: not worth retrying)."""


@registry.handler("payment", on_interrupted=OnInterrupted.BLOCK)
def payment(message: Message) -> None:
    p = message.payload
    ref = p.get("booking_id") or p.get("order_id")
    if "amount" not in p:
        raise PaymentRefused(f"missing field 'amount' in {message.event} ({ref})")
    currency = p.get("currency", "EUR")
    if currency not in SUPPORTED_CURRENCIES:
        raise PaymentRefused(
            f"currency {currency!r} of {ref} is not supported by the provider (supported: {', '.join(SUPPORTED_CURRENCIES)})"
        )
    action = "refund" if message.event == "order.cancelled" else "charge"
    # The message id is the idempotency key: a replay never charges twice.
    log.info("actor=payment message=%s %s %s %s for %s", message.id, action, p["amount"], currency, ref)


@registry.handler("notification")
def notification(message: Message) -> None:
    customer = message.payload.get("customer") or {}
    log.info("actor=notification message=%s e-mail %s: booking %s confirmed", message.id, customer.get("email"),
             message.payload.get("booking_id"))


@registry.handler("availability")
def availability(message: Message) -> None:
    p = message.payload
    log.info("actor=availability message=%s hold %s seats on %r %s", message.id, p.get("seats"), p.get("tour"), p.get("date"))


@registry.handler("shipping")
def shipping(message: Message) -> None:
    log.info("actor=shipping message=%s %s order %s", message.id, message.event, message.payload.get("order_id"))


@registry.handler("analytics")
def analytics(message: Message) -> None:
    log.info("actor=analytics message=%s count %s", message.id, message.event)


@registry.handler("inventory")
def inventory(message: Message) -> None:
    if message.attempt <= 1 and zlib.crc32(message.id.encode()) % 5 == 0:
        raise TransientError("inventory service answered 503")
    log.info("actor=inventory message=%s reserve %s for %s", message.id, message.payload.get("items"),
             message.payload.get("order_id"))


def _chat(participant: str):
    def deliver(message: Message) -> None:
        p = message.payload
        log.info("actor=%s message=%s line %s from %s: %s", participant, message.id, p.get("n"), p.get("from"), p.get("text"))

    deliver.__name__ = f"chat_{participant.split('-', 1)[1]}"
    return deliver


for _name in ("chat-alice", "chat-bob"):
    registry.register(_name, _chat(_name))
