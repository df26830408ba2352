"""Alert rules evaluated on the board's rows: shown on the overview, served as JSON under
/api/alerts and exported as fifoq_alert_firing{rule,actor} on /metrics.

Configured from the environment (or create_app's config), validated at start-up by
backend.settings' parser:

- ADMIN_ALERT_BLOCKED_MINUTES (default 5): an actor blocked at least this long. 0 fires at once.
- ADMIN_ALERT_QUEUE_DEPTH (default 1000): a queue holding at least this many messages (the
  broker's ready + unacked; the ledger's open count when the broker has no figure). 0 disables.
- ADMIN_ALERT_NO_CONSUMER (default 1): an actor that is neither paused nor blocked while its queue
  has no consumer (no connector is serving it). 0 disables. A paused or blocked actor has no
  consumer on purpose: the runtime closes its channel, so those do not fire.
- divergence (always on): the ledger and the broker disagree on what the actor's queue holds,
  beyond what the broker's statistics lag explains, persistently (admin.consistency).
- ADMIN_ALERT_PERSIST_SECONDS (default 60): a missing consumer and a ledger/broker divergence are
  flagged only once they have held in every sample over this time. The management API's figures
  lag by a few seconds, so after a resume the consumer shows up a moment later, and messages
  arriving at a blocked actor are in the ledger before they are in the broker's statistics: a
  single sample would cry wolf. 0 flags them at once.
- ADMIN_BROKER_STATS_LAG_SECONDS (default 15): how old the management API's queue figures may be
  (RabbitMQ collects them every 5 s by default, collect_statistics_interval): messages that arrived
  or settled within this time may be missing from, or still counted in, the broker's figures.

Blocked and queue-depth alerts fire while their condition holds (the blocked one has its own
delay); the persistence of the two others is remembered in the console's store (admin.watch), the
same for every console worker. Prometheus' `for:` clause (docker/prometheus/rules/fifoq.yml) adds
its own delay before paging.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from admin.watch import Sample
from backend.settings import EnvSettings, setting


class Rule(str, Enum):
    ACTOR_BLOCKED = "actor_blocked"
    QUEUE_DEPTH = "queue_depth"
    NO_CONSUMER = "no_consumer"
    DIVERGENCE = "divergence"


class AlertRules(EnvSettings):
    blocked_minutes: float = setting("ADMIN_ALERT_BLOCKED_MINUTES", 5.0, ge=0.0, le=525_600.0)
    queue_depth: int = setting("ADMIN_ALERT_QUEUE_DEPTH", 1000, ge=0)
    no_consumer: bool = setting("ADMIN_ALERT_NO_CONSUMER", True)
    persist_seconds: float = setting("ADMIN_ALERT_PERSIST_SECONDS", 60.0, ge=0.0, le=86_400.0)
    broker_lag_seconds: float = setting("ADMIN_BROKER_STATS_LAG_SECONDS", 15.0, ge=0.0, le=3_600.0)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass(frozen=True)
class Alert:
    rule: Rule
    actor: str
    message: str
    value: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.value, "actor": self.actor, "message": self.message,
                "value": self.value, "threshold": self.threshold}


def depth_of(row: dict[str, Any]) -> int | None:
    """Messages waiting for the actor: the broker's ready + unacked, else the ledger's open count."""
    queue = row.get("queue") or {}
    ready, unacked = queue.get("messages_ready"), queue.get("messages_unacknowledged")
    if ready is not None and unacked is not None:
        return int(ready) + int(unacked)
    return row.get("open")


def evaluate(rules: AlertRules, rows: list[dict[str, Any]], broker_error: str | None = None,
             sample: Sample | None = None) -> list[Alert]:
    """The alerts firing for the board's rows (admin.board.actor_row), most urgent first.

    Rules that need the broker's figures are not evaluated for a row without them: an unreachable
    broker is reported as such by the board, never as "no consumer". With a `sample` of the
    console's watch (admin.watch.request_sample()), a missing consumer fires only once it has
    persisted for rules.persist_seconds; without one (a direct call), as soon as it is seen.
    """
    out: list[Alert] = []
    for row in rows:
        name = row["name"]
        blocked_for = row.get("blocked_for_seconds")
        if row.get("blocked") and blocked_for is not None and blocked_for >= rules.blocked_minutes * 60:
            err = (row["blocked"].get("error") or {})
            out.append(Alert(Rule.ACTOR_BLOCKED, name,
                             f"{name} blocked for {blocked_for / 60:.1f} min on {err.get('type', 'an error')}",
                             round(blocked_for, 1), rules.blocked_minutes * 60))
        depth = depth_of(row)
        if rules.queue_depth and depth is not None and depth >= rules.queue_depth:
            out.append(Alert(Rule.QUEUE_DEPTH, name, f"{name} has {depth} messages waiting", depth, rules.queue_depth))
        queue = row.get("queue")
        if rules.no_consumer and not broker_error and queue is not None and queue.get("consumer_connected") is not None:
            # Paused and blocked actors have no consumer on purpose; a resumed one gets it back a
            # moment later, and the broker's figures show it later still: only a lasting absence fires.
            orphan = row.get("state") == "running" and queue.get("consumer_connected") is False
            fire, held = (orphan, 0.0 if orphan else None) if sample is None else \
                sample.persistent(f"no_consumer:{name}", orphan)
            if fire:
                lasting = f" (for {held:.0f} s)" if held else ""
                out.append(Alert(Rule.NO_CONSUMER, name, f"no connector is consuming {name}'s queue{lasting}",
                                 round(held or 0, 1), rules.persist_seconds))
        check = row.get("consistency") or {}
        if check.get("ok") is False:
            out.append(Alert(Rule.DIVERGENCE, name, f"ledger and broker disagree on {name}: {check.get('explanation')}",
                             float(check.get("divergent_for_seconds") or 0), rules.persist_seconds))
    order = {Rule.ACTOR_BLOCKED: 0, Rule.NO_CONSUMER: 1, Rule.DIVERGENCE: 2, Rule.QUEUE_DEPTH: 3}
    out.sort(key=lambda a: (order[a.rule], a.actor))
    return out
