"""What the console shows, assembled from the ledger and the management API.

Shared by the HTML views and the JSON API so that both say the same thing. Each source is read
independently: when one is unreachable the result carries its error and the other's data, never
an empty list that would look like "nothing to see".
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from admin.consistency import broker_lag, consistency
from admin.rabbitmq_api import BrokerAPIUnavailable, QueueInfo, RabbitAPI
from backend.app import Backend
from backend.errors import FifoqError, StoreError
from backend.ledger import as_aware, run_state, utcnow
from backend.values import FINAL_STATUSES, Status

log = logging.getLogger(__name__)

# A served embedded ledger (development) fails with connection errors rather than StoreError.
LEDGER_DOWN = (StoreError, ConnectionError, EOFError)
OPEN_STATUSES = [s.value for s in Status if s.value not in FINAL_STATUSES]
_LANE_RE = re.compile(r"\.lane\d+$")
# The overview asks the management API while it reads the ledger: the page takes the longer of
# the two, not their sum (the broker's answer is mostly waiting on another process).
_BROKER_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="overview-broker")


@dataclass
class Overview:
    actors: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] | None = None
    ledger_error: str | None = None
    broker_error: str | None = None
    generated_at: datetime = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "actors": self.actors,
            "broker": self.health,
            "ledger_error": self.ledger_error,
            "broker_error": self.broker_error,
            "generated_at": self.generated_at,
        }


def actor_of_queue(prefix: str, queue: str) -> str | None:
    """'fifoq.actor.payment.lane2' -> 'payment'; None for queues that are not actor queues."""
    head = f"{prefix}.actor."
    if not queue.startswith(head):
        return None
    return _LANE_RE.sub("", queue[len(head):]) or None


def group_queues(prefix: str, queues: list[QueueInfo]) -> dict[str, list[QueueInfo]]:
    out: dict[str, list[QueueInfo]] = {}
    for q in queues:
        actor = actor_of_queue(prefix, q.name)
        if actor is not None:
            out.setdefault(actor, []).append(q)
    return out


def _sum(values: list[Any]) -> Any:
    if not values or any(v is None for v in values):
        return None
    return sum(values)


def _all(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def queue_summary(queues: list[QueueInfo] | None) -> dict[str, Any] | None:
    """One actor's queues (one per lane) added up; None when the broker has none."""
    if not queues:
        return None
    return {
        "names": [q.name for q in queues],
        "messages_ready": _sum([q.messages_ready for q in queues]),
        "messages_unacknowledged": _sum([q.messages_unacknowledged for q in queues]),
        "consumers": _sum([q.consumers for q in queues]),
        "consumer_connected": _all([q.consumer_connected for q in queues]),
        "active_consumer_tags": [q.active_consumer_tag for q in queues if q.active_consumer_tag],
        "ack_rate": _sum([q.ack_rate for q in queues]),
        "deliver_rate": _sum([q.deliver_rate for q in queues]),
        "publish_rate": _sum([q.publish_rate for q in queues]),
    }


def _age(at: datetime | None, now: datetime) -> float | None:
    at = as_aware(at)
    return None if at is None else max(0.0, (now - at).total_seconds())


_UNSET: Any = object()


def actor_row(backend: Backend, doc: dict[str, Any], counts: dict[str, int], queues: list[QueueInfo] | None,
              broker_error: str | None, now: datetime, head: dict[str, Any] | None = _UNSET,
              arrivals: Any = None) -> dict[str, Any]:
    """One line of the board: ledger state, broker figures, what waits and since when. `head`: the
    actor's oldest open message when the caller fetched every actor's at once (Ledger.board);
    `arrivals`: the board's count of recent arrivals (Ledger.board), else the ledger is asked."""
    name = doc["_id"]
    state = run_state(doc).value
    open_count = sum(counts.get(s, 0) for s in OPEN_STATUSES)
    if head is _UNSET:
        head = backend.ledger.first_open(name) if open_count else None
    blocked = doc.get("blocked")
    if blocked:
        blocked = dict(blocked, since=as_aware(blocked.get("since")))
    paused = doc.get("paused")
    if paused:
        paused = dict(paused, at=as_aware(paused.get("at")))
    queue = queue_summary(queues)
    oldest = as_aware(head.get("created_at")) if head else None
    if "blocked_keys" in doc:  # derived by Ledger.actors / Ledger.board
        blocked_keys = int(doc["blocked_keys"])
    else:
        blocked_keys = len(backend.ledger.blocked_keys(name)) if doc.get("keyed") else 0
    return {
        "name": name,
        "state": state,
        "description": doc.get("description") or "",
        "paused": paused,
        "blocked": blocked,
        "blocked_for_seconds": _age(blocked.get("since"), now) if blocked else None,
        "keyed": bool(doc.get("keyed")),
        "lanes": int(doc.get("lanes", 1)),
        "blocked_keys": blocked_keys,
        "counts": {s.value: counts.get(s.value, 0) for s in Status},
        "open": open_count,
        "waiting_behind_head": max(0, open_count - 1) if blocked else None,
        "head_message_id": head["_id"] if head else None,
        "oldest_open_at": oldest,
        "oldest_open_age_seconds": _age(oldest, now),
        "queue": queue,
        "consistency": consistency(counts, queue, broker_error, actor=name, ledger=arrivals or backend.ledger, now=now),
    }


def broker_only_row(actor: str, queues: list[QueueInfo]) -> dict[str, Any]:
    """A board line when the ledger cannot be read: what the broker alone can tell."""
    return {
        "name": actor, "state": "unknown", "description": "", "paused": None, "blocked": None,
        "blocked_for_seconds": None, "keyed": None, "lanes": None, "blocked_keys": None, "counts": None, "open": None, "waiting_behind_head": None,
        "head_message_id": None, "oldest_open_at": None, "oldest_open_age_seconds": None,
        "queue": queue_summary(queues), "consistency": None,
    }


class Arrivals:
    """`created_since` for the ledger-versus-broker check of every line of a board (see
    admin.consistency), answered from the counts Ledger.board made for the same time; the ledger
    is asked only where the board could not count."""

    def __init__(self, ledger: Any, since: datetime, counted: dict[str, int | None]) -> None:
        self.ledger = ledger
        self.since = since
        self.counted = counted

    def created_since(self, actor: str, since: datetime) -> int:
        found = self.counted.get(actor) if since == self.since else None
        return self.ledger.created_since(actor, since) if found is None else int(found)


def _broker_queues(api: RabbitAPI, prefix: str) -> tuple[dict[str, list[QueueInfo]] | None, str | None]:
    try:
        return group_queues(prefix, api.queues(f"{prefix}.actor.")), None
    except BrokerAPIUnavailable as exc:
        return None, str(exc)


def _broker_part(health: Future[dict[str, Any]], queues: Future[tuple[dict[str, list[QueueInfo]] | None, str | None]],
                 ) -> tuple[dict[str, Any] | None, dict[str, list[QueueInfo]] | None, str | None]:
    """(health, actor queues, error) from the management API, asked both at once; error set when
    it is unreachable."""
    try:
        found = health.result()
    except BrokerAPIUnavailable as exc:
        return None, None, str(exc)
    by_actor, error = queues.result()
    return found, by_actor, error


def build_overview(backend: Backend, api: RabbitAPI, *, name: str = "", blocked_only: bool = False) -> Overview:
    result = Overview()
    now = result.generated_at
    prefix = backend.settings.prefix
    health_asked = _BROKER_READS.submit(api.health)
    queues_asked = _BROKER_READS.submit(_broker_queues, api, prefix)
    needle = name.strip().lower()
    ledger_error: BaseException | None = None
    try:
        since = now - timedelta(seconds=broker_lag())
        board = backend.ledger.board(arrived_since=since)
        docs, counts, heads = board["actors"], board["counts"], board["heads"]
        arrivals = Arrivals(backend.ledger, since, board["arrived"])
    except LEDGER_DOWN as exc:
        ledger_error = exc
    found, by_actor, broker_error = _broker_part(health_asked, queues_asked)
    if found is not None:
        result.health = found
    result.broker_error = broker_error
    try:
        if ledger_error is not None:
            raise ledger_error
        for doc in docs:
            if needle and needle not in doc["_id"].lower():
                continue
            if blocked_only and not doc.get("blocked") and not doc.get("blocked_keys"):
                continue
            queues = None if by_actor is None else by_actor.get(doc["_id"], [])
            result.actors.append(actor_row(backend, doc, counts.get(doc["_id"], {}), queues, result.broker_error, now,
                                           heads.get(doc["_id"]), arrivals=arrivals))
    except LEDGER_DOWN as exc:
        log.warning("overview: ledger unavailable: %s", exc)
        result.ledger_error = str(exc) if isinstance(exc, StoreError) else f"ledger unavailable: {type(exc).__name__}: {exc}"
        result.actors = []
        if by_actor is not None and not blocked_only:
            # The broker still tells which actor queues exist and how deep they are.
            for actor, queues in sorted(by_actor.items()):
                if needle and needle not in actor.lower():
                    continue
                result.actors.append(broker_only_row(actor, queues))
    # Blocked first, then paused, then by name: what needs attention comes first.
    order = {"blocked": 0, "paused": 1, "running": 2, "unknown": 3}
    result.actors.sort(key=lambda r: (order.get(r["state"], 9), r["name"]))
    return result


def actor_detail(backend: Backend, api: RabbitAPI, name: str) -> dict[str, Any]:
    """The actor page's header: state, blocked head with its error, counts, broker figures,
    consistency. Raises UnknownActor / StoreError (the page cannot exist without the ledger)."""
    doc = backend.ledger.actor(name)
    counts = backend.ledger.status_counts(name).get(name, {})
    broker_error = None
    queues: list[QueueInfo] | None = None
    try:
        queues = group_queues(backend.settings.prefix, api.queues(backend.settings.queue_name(name))).get(name, [])
    except BrokerAPIUnavailable as exc:
        broker_error = str(exc)
    row = actor_row(backend, doc, counts, queues, broker_error, utcnow())
    head = None
    if doc.get("blocked"):
        try:
            head = backend.ledger.message(doc["blocked"]["message_id"])
        except FifoqError:  # the message vanished (manual cleanup): show the actor anyway
            log.warning("actor=%s blocked on message=%s which is not in the ledger", name, doc["blocked"].get("message_id"))
    row.update(
        key_blocks=blocked_keys(backend, name) if doc.get("keyed") else [],
        broker_error=broker_error,
        schema=doc.get("schema"),
        subscriptions=doc.get("subscriptions") or [],
        queue_type=doc.get("queue_type"),
        last_seq=doc.get("last_seq", 0),
        created_at=as_aware(doc.get("created_at")),
        blocked_head=head,
        queue_name=backend.settings.queue_name(name),
        **lane_facts(backend, name),
    )
    return row


def lane_facts(backend: Backend, name: str) -> dict[str, Any]:
    """What the actor's lane documents say beyond counts: retention (how long settled messages
    are kept, how many were removed) and the last unexpected error of a worker, per lane."""
    lanes = backend.ledger.lanes.of_actor(name)
    errors = [dict(lane["worker_error"], lane=lane["lane"], at=as_aware(lane["worker_error"].get("at")))
              for lane in lanes if lane.get("worker_error")]
    return {
        "retention": {"seconds": backend.settings.retention, "audit_seconds": backend.settings.audit_retention,
                      "removed": sum(max(0, int(lane.get("floor", 1)) - 1) for lane in lanes)},
        "worker_errors": errors,
    }


def blocked_keys(backend: Backend, name: str) -> list[dict[str, Any]]:
    """An actor with ordering keys: each blocked key, its failed message and what is held behind it."""
    now = utcnow()
    out = []
    for k in backend.ledger.blocked_keys(name):
        b = k["blocked"]
        since = as_aware(b.get("since"))
        out.append({
            "key": k["key"],
            "lane": k.get("lane", 0),
            "message_id": b["message_id"],
            "seq": b["seq"],
            "since": since,
            "blocked_for_seconds": _age(since, now),
            "error": b.get("error"),
            "held": len(backend.ledger.held(name, k["key"])),
        })
    return out
