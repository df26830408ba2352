"""Retention: settled messages older than FIFOQ_RETENTION are removed, optionally archived first,
and audit entries older than FIFOQ_AUDIT_RETENTION too.

A lane is swept upwards from its `floor` and never past its watermark: only messages the lane
has passed and that are settled (done, cancelled, a gap's tombstone) and settled before the
limit are removed, in sequence order, and the floor moves over them. Nothing the runtime needs
depends on them: a connector starts at its lane's watermark, the relay at its published mark,
the counters live in the lane document. A sweep costs the messages it removes, never the lane's
history. `FIFOQ_RETENTION=0` keeps everything.

Why not a MongoDB TTL index: a TTL monitor removes by date alone, and could remove a settled
message above its lane's watermark (a connector that stopped before folding), which the next
connector would then take for a gap. The sweep knows the watermark; on MongoDB it reads and
removes by id, in batches.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from backend.errors import FifoqError
from backend.ledger import Ledger
from backend.settings import Settings

log = logging.getLogger(__name__)

SWEEP_BATCH = 500
SWEEP_INTERVAL_SECONDS = 60.0


@dataclass
class SweepReport:
    removed: int = 0
    audit_removed: int = 0
    lanes: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"removed {self.removed} settled message(s) from {len(self.lanes)} lane(s), {self.audit_removed} audit entr(y/ies)"


class JsonLinesArchive:
    """Writes each message about to be removed as one JSON line (datetimes in ISO 8601), flushed
    and synced before the removal."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.written = 0

    def __call__(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            self.out.write(json.dumps({k: v for k, v in doc.items() if k != "search"}, default=_jsonable,
                                      ensure_ascii=False, sort_keys=True) + "\n")
        self.out.flush()
        try:
            os.fsync(self.out.fileno())
        except (OSError, ValueError, AttributeError):
            pass  # not a file (a pipe, a test buffer)
        self.written += len(docs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def retention_interval(retention: float) -> float:
    """How often to sweep: every minute, or a fifth of a shorter retention (at least 5 s)."""
    return max(5.0, min(SWEEP_INTERVAL_SECONDS, retention / 5)) if retention > 0 else SWEEP_INTERVAL_SECONDS


class Retention:
    def __init__(self, settings: Settings, ledger: Ledger, audit_col: Any | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.audit_col = audit_col

    def sweep_once(self, *, older_than: float | None = None, archive: Callable[[list[dict[str, Any]]], None] | None = None,
                   audit_older_than: float | None = None) -> SweepReport:
        """One pass over every lane (and the audit trail). `older_than`: seconds (default
        FIFOQ_RETENTION; 0 keeps everything)."""
        report = SweepReport()
        keep = self.settings.retention if older_than is None else older_than
        now = self.ledger.now()
        if keep > 0:
            cutoff = now - timedelta(seconds=keep)
            for lane in self.ledger.lanes.all():
                removed = 0
                while True:
                    n = self.ledger.sweep_lane(lane, cutoff, SWEEP_BATCH, archive=archive)
                    removed += n
                    if n < SWEEP_BATCH:
                        break
                    lane = self.ledger.lanes.get(lane["actor"], lane["lane"])
                if removed:
                    report.lanes[lane["_id"]] = removed
                    report.removed += removed
        for lane in self.ledger.lanes.all():  # the charts keep the last hour, whatever the retention
            self.ledger.lanes.prune_activity(lane, now)
        audit_keep = self.settings.audit_retention if audit_older_than is None else audit_older_than
        if self.audit_col is not None and audit_keep > 0:
            res = self.audit_col.delete_many({"at": {"$lt": now - timedelta(seconds=audit_keep)}})
            report.audit_removed = int(res.deleted_count)
        if report.removed or report.audit_removed:
            log.info("retention: %s", report)
        return report

    def run_forever(self, stop: threading.Event, interval: float = SWEEP_INTERVAL_SECONDS) -> None:
        while not stop.is_set():
            try:
                self.sweep_once()
            except FifoqError as exc:
                log.warning("retention sweep failed (next try in %.0fs): %s", interval, exc)
            stop.wait(interval)

    def start(self, stop: threading.Event, interval: float = SWEEP_INTERVAL_SECONDS) -> threading.Thread:
        t = threading.Thread(target=self.run_forever, args=(stop, interval), name="fifoq-retention", daemon=True)
        t.start()
        return t


def archive_to(path: Path) -> JsonLinesArchive:
    """An archive appending to `path` (created 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return JsonLinesArchive(os.fdopen(fd, "a", encoding="utf-8"))
