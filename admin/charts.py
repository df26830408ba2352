"""Chart data for the console: processed and failed per minute, and backlog, per actor over the
last hour, computed from the ledger's timestamps on each request.

Why the ledger and not a sampler: the ledger already records when each message was created and
when each attempt finished, so per-minute rates are exact, survive a console restart, agree across
several console replicas, and need no background thread. The backlog line is the ledger's open
count (pending, queued, processing or failed: what still waits for the actor), rebuilt backwards
from the current count: open(t) = open(now) - created after t + settled after t. It is not the
broker's queue depth, which only exists as a current figure (shown in the board's table).

The cost is three aggregations over the messages touched in the window per request; the charts
are fetched by the page's script, so the overview's own response time does not include them.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from admin import timefmt
from backend.app import Backend
from backend.lanes import MINUTE_FORMAT
from backend.ledger import utcnow
from backend.metrics import ledger_activity
from backend.values import FINAL_STATUSES

DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60
DEFAULT_TOP = 8  # actors drawn individually; the rest are only in the total


def minute_floor(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def activity(backend: Backend, *, minutes: int = DEFAULT_MINUTES, top: int = DEFAULT_TOP, actor: str | None = None,
             now: datetime | None = None) -> dict[str, Any]:
    """Series for the charts: {"minutes": [start of each minute, ISO 8601 UTC with Z...], "series": [{"actor", "processed",
    "failed", "backlog"}...], "total": {...}, "available": bool, "note": str}.

    Actors are ranked by processed + failed + current backlog; the `top` first are returned
    (or only `actor` when given). Raises StoreError when the ledger cannot be read.
    """
    now = now or utcnow()
    end = minute_floor(now)
    start = end - timedelta(minutes=minutes - 1)
    starts = [start + timedelta(minutes=i) for i in range(minutes)]
    keys = [m.strftime(MINUTE_FORMAT) for m in starts]
    labels = [timefmt.iso(m) for m in starts]
    raw = ledger_activity(backend.ledger, start)
    if raw is None:
        return {"minutes": labels, "series": [], "total": None, "available": False,
                "note": "charts need direct access to the ledger (not available over embedded://)"}
    counts = backend.ledger.status_counts(actor)
    open_now = {a: sum(n for s, n in c.items() if s not in FINAL_STATUSES) for a, c in counts.items()}
    names = set(open_now) | {a for kind in raw.values() for a in kind}
    if actor is not None:
        names &= {actor}

    def series(a: str) -> dict[str, Any]:
        done = [raw["done"].get(a, {}).get(k, 0) for k in keys]
        failed = [raw["failed"].get(a, {}).get(k, 0) for k in keys]
        created = [raw["created"].get(a, {}).get(k, 0) for k in keys]
        settled = [raw["settled"].get(a, {}).get(k, 0) for k in keys]
        backlog = [0] * minutes
        level = open_now.get(a, 0)  # at the end of the current (last) minute
        for i in range(minutes - 1, -1, -1):
            backlog[i] = max(0, level)
            level = level - created[i] + settled[i]
        return {"actor": a, "processed": done, "failed": failed, "backlog": backlog}

    all_series = [series(a) for a in sorted(names)]
    all_series.sort(key=lambda s: -(sum(s["processed"]) + sum(s["failed"]) + s["backlog"][-1]))
    total = {
        "actor": "(all actors)",
        "processed": [sum(s["processed"][i] for s in all_series) for i in range(minutes)],
        "failed": [sum(s["failed"][i] for s in all_series) for i in range(minutes)],
        "backlog": [sum(s["backlog"][i] for s in all_series) for i in range(minutes)],
    }
    return {"minutes": labels, "series": all_series[: max(0, top)], "total": total, "actors": len(all_series),
            "available": True, "note": "per minute, from the ledger's timestamps; backlog = open messages in the ledger"}
