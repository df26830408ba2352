"""Alert rules evaluated on the board's rows: shown on the overview, served as JSON under
/api/alerts and exported as fifoq_alert_firing{rule,actor} on /metrics.

Configured from the environment (or create_app's config), validated at start-up:

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

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Mapping

from backend.errors import ConfigError


class Rule(str, Enum):
    ACTOR_BLOCKED = "actor_blocked"
    QUEUE_DEPTH = "queue_depth"
    NO_CONSUMER = "no_consumer"


@dataclass(frozen=True)
class AlertRules:
    blocked_minutes: float = 5.0
    queue_depth: int = 1000
    no_consumer: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "AlertRules":
        """Raises ConfigError naming the variable on bad input."""
        d = cls()
        return cls(
            blocked_minutes=_number(env, "ADMIN_ALERT_BLOCKED_MINUTES", d.blocked_minutes, float),
            queue_depth=int(_number(env, "ADMIN_ALERT_QUEUE_DEPTH", d.queue_depth, int)),
            no_consumer=_flag(env, "ADMIN_ALERT_NO_CONSUMER", d.no_consumer),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _number(env: Mapping[str, str], name: str, default: float, kind: type) -> float:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must be >= 0")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = str(env.get(name, "")).strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be 1 or 0")


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
