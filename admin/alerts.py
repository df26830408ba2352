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

The console keeps no state between requests: a rule fires while its condition holds, and
Prometheus' own `for:` clause is the place to require it to hold for a while.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from backend.settings import EnvSettings, setting


class Rule(str, Enum):
    ACTOR_BLOCKED = "actor_blocked"
    QUEUE_DEPTH = "queue_depth"
    NO_CONSUMER = "no_consumer"


class AlertRules(EnvSettings):
    blocked_minutes: float = setting("ADMIN_ALERT_BLOCKED_MINUTES", 5.0, ge=0.0, le=525_600.0)
    queue_depth: int = setting("ADMIN_ALERT_QUEUE_DEPTH", 1000, ge=0)
    no_consumer: bool = setting("ADMIN_ALERT_NO_CONSUMER", True)

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


def evaluate(rules: AlertRules, rows: list[dict[str, Any]], broker_error: str | None = None) -> list[Alert]:
    """The alerts firing for the board's rows (admin.board.actor_row), most urgent first.

    Rules that need the broker's figures are not evaluated for a row without them: an unreachable
    broker is reported as such by the board, never as "no consumer".
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
        if (rules.no_consumer and not broker_error and queue is not None and row.get("state") == "running"
                and queue.get("consumer_connected") is False):
            out.append(Alert(Rule.NO_CONSUMER, name, f"no connector is consuming {name}'s queue", 0, 1))
    order = {Rule.ACTOR_BLOCKED: 0, Rule.NO_CONSUMER: 1, Rule.QUEUE_DEPTH: 2}
    out.sort(key=lambda a: (order[a.rule], a.actor))
    return out
