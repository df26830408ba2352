"""The retry schedules of fifoq, named and documented in one place (as kombu names its own).

A schedule answers one question: how long to wait before the next try, given how many tries in a
row have failed. Each is exponential, `first * factor ** failures`, capped at `maximum`, with no
jitter (a FIFO consumer retries one thing at a time; nothing stampedes):

- RECONNECT: a connector that lost the broker or the ledger: 0.5, 1, 2, 4, 8, then 15 s forever.
- relay(interval): the outbox relay after a failed pass: its interval, doubling, at most 30 s.
- transient(settings): a handler's TransientError, retried in place before the actor blocks:
  FIFOQ_TRANSIENT_BACKOFF doubling, at most FIFOQ_TRANSIENT_BACKOFF_MAX (the number of tries is
  FIFOQ_TRANSIENT_RETRIES).
- LEDGER_RETRY: the demo's event player while the ledger is down: 1, 2, 4, then 8 s forever.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.settings import Settings

RELAY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Backoff:
    """Delays in seconds: `delay(n)` is the wait after n + 1 failures in a row (n from 0)."""

    first: float
    factor: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if self.first < 0 or self.factor < 1 or self.maximum < 0:
            raise ValueError(f"not a backoff schedule: {self}")

    def delay(self, failures: int) -> float:
        """The wait before the next try once `failures + 1` tries in a row have failed."""
        value = self.first
        for _ in range(max(0, failures)):
            if value >= self.maximum:
                break
            value *= self.factor
        return min(self.maximum, value)

    def delays(self) -> Iterator[float]:
        """delay(0), delay(1), ... without end."""
        failures = 0
        while True:
            yield self.delay(failures)
            failures += 1


RECONNECT = Backoff(first=0.5, factor=2.0, maximum=15.0)
LEDGER_RETRY = Backoff(first=1.0, factor=2.0, maximum=8.0)


def relay(interval: float) -> Backoff:
    """The relay's schedule: its polling interval, doubling after each failed pass."""
    return Backoff(first=interval, factor=2.0, maximum=max(interval, RELAY_MAX_SECONDS))


def transient(settings: Settings) -> Backoff:
    """The schedule of a handler's transient retries."""
    return Backoff(first=settings.transient_backoff, factor=2.0,
                   maximum=max(settings.transient_backoff, settings.transient_backoff_max))
