"""Where a lane worker stands: its position in the lane, the messages it passed since its last
fold, read-ahead of the messages it is about to meet, and sequence gaps.

The position is the lowest sequence number the worker has not passed. Below it every message is
settled (done, cancelled, a gap's tombstone) or, in a lane with ordering keys, in its key's
custody. A worker starts at its lane's watermark + 1 and steps over what is settled already;
what it passes is folded into the watermark (one compare-and-set per batch, which also counts
those messages exactly once) when it goes idle, every FOLD_EVERY messages, and before it stops
or blocks.

The read-ahead only saves round trips: a message's cached copy is trusted for nothing but its
settled state (final states never change); everything else is decided by a conditional write
(the claim) or a fresh read.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from backend.lanes import reserved_at
from backend.ledger import Ledger, as_aware
from backend.settings import Settings

log = logging.getLogger(__name__)

READ_AHEAD = 100  # sequence numbers read at once past the position
FOLD_EVERY = 100  # passed messages between two folds while busy


class LaneCursor:
    def __init__(self, settings: Settings, ledger: Ledger, actor: str, lane: int, name: str) -> None:
        self.settings = settings
        self.ledger = ledger
        self.actor = actor
        self.lane = lane
        self.name = name
        self.lane_doc: dict[str, Any] | None = None
        self.pos: int | None = None
        self.unfolded: list[dict[str, Any]] = []
        self._docs: dict[int, dict[str, Any]] = {}
        self.read_ahead_was_full = False  # the last read-ahead found every number it asked for
        self._gap_seen: dict[int, tuple[float, int]] = {}  # seq -> (monotonic first seen, allocator then)
        self._gap_logged: set[int] = set()

    # -- position ----------------------------------------------------------------------------
    def load(self) -> None:
        """Start again from the lane's watermark (activation, after a conflict)."""
        self.lane_doc = self.ledger.lane(self.actor, self.lane)
        self.pos = int(self.lane_doc["w"]) + 1
        self.unfolded = []
        self._docs.clear()

    def ensure(self) -> int:
        if self.pos is None:
            self.load()
        assert self.pos is not None
        return self.pos

    def forget(self) -> None:
        """Drop the position (a standby becoming active must read it again)."""
        self.pos = None
        self.unfolded = []
        self._docs.clear()

    def refresh_lane(self) -> dict[str, Any]:
        self.lane_doc = self.ledger.lane(self.actor, self.lane)
        if self.pos is not None and int(self.lane_doc["w"]) >= self.pos:
            # Another worker passed our position (a replica that was active meanwhile).
            self.pos = int(self.lane_doc["w"]) + 1
            self.unfolded = []
            self._docs = {s: d for s, d in self._docs.items() if s >= self.pos}
        return self.lane_doc

    # -- messages ----------------------------------------------------------------------------
    def doc(self, seq: int, also: Iterable[int] = ()) -> dict[str, Any] | None:
        """The message at `seq` (read ahead with the next ones and `also`, in one query)."""
        if seq not in self._docs:
            wanted = set(range(seq, seq + READ_AHEAD)) | {s for s in also if s >= seq}
            found = self.ledger.by_seqs(self.actor, self.lane, sorted(wanted))
            self.read_ahead_was_full = len(found) == len(wanted)
            self._docs.update(found)
        return self._docs.get(seq)

    def cached(self, seq: int) -> dict[str, Any] | None:
        return self._docs.get(seq)

    def fresh(self, seq: int) -> dict[str, Any] | None:
        found = self.ledger.by_seqs(self.actor, self.lane, [seq])
        doc = found.get(seq)
        if doc is None:
            self._docs.pop(seq, None)
        else:
            self._docs[seq] = doc
        return doc

    def remember(self, doc: dict[str, Any]) -> None:
        self._docs[doc["seq"]] = doc

    def passed(self, doc: dict[str, Any]) -> None:
        """The message at the position is settled: step over it."""
        assert self.pos == doc["seq"], (self.pos, doc["seq"])
        self.unfolded.append(doc)
        self._docs.pop(doc["seq"], None)
        self._gap_seen.pop(doc["seq"], None)
        self.pos = doc["seq"] + 1
        if len(self.unfolded) >= FOLD_EVERY:
            self.fold()

    # -- folding -----------------------------------------------------------------------------
    def fold(self, custody: dict[str, Any] | None = None, key_blocked: str | None = None) -> bool:
        """Move the lane's watermark up to the position (and, with `custody`, put the message at
        the position into its key's custody and step over it). False: the lane changed meanwhile
        in a way that asks for a new decision (a key released), with the cursor re-read."""
        assert self.pos is not None
        if self.lane_doc is None:
            self.lane_doc = self.ledger.lane(self.actor, self.lane)
        to = self.pos if custody is not None else self.pos - 1
        for _ in range(5):
            w = int(self.lane_doc["w"])
            if w >= to and custody is None:
                self.unfolded = []
                return True
            passed = [d for d in self.unfolded if d["seq"] > w]
            after = self.ledger.fold(self.lane_doc, to, passed, custody=custody, key_blocked=key_blocked)
            if after is not None:
                self.lane_doc = after
                self.unfolded = []
                if custody is not None:
                    self._docs.pop(self.pos, None)
                    self.pos += 1
                return True
            self.lane_doc = self.ledger.lane(self.actor, self.lane)
            if int(self.lane_doc["w"]) >= to:
                # Someone else passed this far (and took the decision at the position).
                self.unfolded = []
                self.pos = int(self.lane_doc["w"]) + 1
                self._docs.clear()
                return custody is None
            if custody is not None and key_blocked is not None and not any(
                e["k"] == key_blocked for e in self.lane_doc.get("custody", [])
            ):
                return False  # the key was released meanwhile: run the message instead
        log.warning("actor=%s lane=%d watermark kept moving under us: reloading", self.actor, self.lane)
        self.load()
        return False

    # -- gaps --------------------------------------------------------------------------------
    def gap(self, seq: int) -> bool:
        """`seq` is reserved and not stored. True once it is closed (a tombstone stored now, or
        the message landed meanwhile); False while its emitter may still store it.

        A number is closed FIFOQ_GAP_GRACE after its reservation (from the lane's allocation
        log), or after this worker first saw it missing, whichever it can prove first; every
        missing number reserved as long ago is closed with it, in one write."""
        grace = self.settings.gap_grace
        lane = self.refresh_lane()
        top = int(lane["next"]) - 1
        if seq > top:
            return False  # not even reserved: nothing to wait for here
        now_mono = time.monotonic()
        first_seen, top_then = self._gap_seen.setdefault(seq, (now_mono, top))
        now = self.ledger.now()
        upto = top_then if now_mono - first_seen >= grace else 0
        at, _exact = reserved_at(lane, seq)
        if at is not None and now - as_aware(at) >= timedelta(seconds=grace):
            # Reserved (at the latest) `at`: it and every number reserved as long ago can close.
            upto = max(upto, seq, self._reserved_before(lane, now - timedelta(seconds=grace)))
        if upto < seq:
            if self.fresh(seq):
                return True
            if seq not in self._gap_logged:
                self._gap_logged.add(seq)
                log.info("actor=%s waiting for sequence %d (reserved, not stored yet; closed %gs after its reservation)",
                         self.name, seq, grace)
            return False
        docs = {}
        for lo in range(seq, upto + 1, 500):
            docs.update(self.ledger.by_seqs(self.actor, self.lane, range(lo, min(upto, lo + 499) + 1)))
        missing = [s for s in range(seq, upto + 1) if s not in docs]
        self.ledger.close_gaps(self.actor, self.lane, missing,
                               f"sequence number reserved more than {grace:g}s ago and never stored (its emitter stopped)")
        for s in missing:
            self._gap_seen.pop(s, None)
            self._gap_logged.discard(s)
            self._docs.pop(s, None)
        self._docs.update(docs)
        return bool(self.fresh(seq))

    @staticmethod
    def _reserved_before(lane: dict[str, Any], when: Any) -> int:
        """The highest number whose reservation is at or before `when` (allocation log)."""
        upto = int(lane["next"]) - 1
        for entry in reversed(lane.get("alloc") or []):
            if as_aware(entry["at"]) <= when:
                return upto
            upto -= int(entry["n"])
        return upto
