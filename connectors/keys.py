"""The key gate of a lane with ordering keys.

A failure blocks only its key. The lane passes the failed message into its key's custody (an
entry in the lane document, written with the watermark in one compare-and-set) and goes on; a
later message of a key that has an entry in custody is passed into custody too (the same
compare-and-set, which also requires the key to still have an entry: a key released meanwhile
takes no new one, and its message runs instead). Custody empties in key order: the lowest entry
of each key runs when it may (replay requested, or it was held behind an entry that is now
settled), and leaves custody once settled. Whoever finds an entry settled releases it (a
conditional `$pull`): a worker that died between settling a message and releasing it leaves
nothing wrong.

Nothing here trusts a cached "blocked" or "not blocked": a message of key k runs at the front
only when the lane document, read after every earlier message of the lane was passed, has no
entry of k, and entries are only ever added at the front.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from backend import transitions as tr
from backend.lanes import Tally
from backend.ledger import scope_key
from connectors.steps import Step

if TYPE_CHECKING:
    from connectors.worker import LaneWorker

log = logging.getLogger(__name__)


def _has_entry(lane_doc: dict[str, Any], key: str) -> bool:
    return any(e["k"] == key for e in lane_doc.get("custody", []))


class KeyGate:
    def __init__(self, worker: LaneWorker) -> None:
        self.w = worker

    def front(self, doc: dict[str, Any]) -> Step:
        """Decide for the open message at the lane's position."""
        w, cursor = self.w, self.w.cursor
        key = scope_key(doc)
        lane = cursor.lane_doc if cursor.lane_doc is not None else cursor.refresh_lane()
        blocked = _has_entry(lane, key)
        status = doc["status"]
        if tr.is_processing(status) and w.other_live_claim(doc):
            return Step.WAIT
        if tr.is_failed(status) and not (doc.get("replay_requested") and not blocked):
            # Failed here (its custody entry not written yet: a process stopped in between).
            return self._into_custody(doc, key, key_blocked=None)
        if blocked and not tr.is_processing(status) and not tr.is_failed(status):
            w.ledger.hold(doc)
            w.stats.held += 1
            log.info("actor=%s message=%s seq=%d held behind blocked key %r", w.actor, doc["_id"], doc["seq"], key)
            return self._into_custody(doc, key, key_blocked=key)
        return w.run_message(doc)

    def after_failure(self, doc: dict[str, Any]) -> Step:
        """The message at the front failed (settled as failed): its key takes custody of it."""
        return self._into_custody(doc, scope_key(doc), key_blocked=None)

    def _into_custody(self, doc: dict[str, Any], key: str, key_blocked: str | None) -> Step:
        if self.w.cursor.fold(custody={"s": doc["seq"], "k": key}, key_blocked=key_blocked):
            return Step.PASSED
        return Step.CONTINUE  # the key was released meanwhile: decide again

    def may_front_run(self, doc: dict[str, Any]) -> bool:
        """Can the next message be claimed together with settling the current one?"""
        lane = self.w.cursor.lane_doc
        return lane is not None and not _has_entry(lane, scope_key(doc))

    # -- custody ---------------------------------------------------------------------------
    def resume(self) -> bool:
        """Run what custody lets run, key by key, in order; release settled entries. Returns
        True if anything moved."""
        w, cursor = self.w, self.w.cursor
        lane = cursor.refresh_lane()
        entries = sorted(lane.get("custody", []), key=lambda e: e["s"])
        if not entries:
            return False
        docs = w.ledger.by_seqs(w.actor, w.lane, [e["s"] for e in entries])
        keys: dict[str, list[int]] = {}
        for e in entries:
            keys.setdefault(e["k"], []).append(e["s"])
        moved = False
        for key, seqs in keys.items():
            key_moved, go_on = self._resume_key(lane["_id"], key, seqs, docs)
            moved = moved or key_moved
            if not go_on:
                break
        if moved:
            cursor.refresh_lane()
        return moved

    def _resume_key(self, lane_id: str, key: str, seqs: list[int], docs: dict[int, dict[str, Any]]) -> tuple[bool, bool]:
        """One key's custody, lowest entry first. Returns (anything moved, go on with other keys)."""
        w = self.w
        moved = False
        for seq in seqs:
            doc = docs.get(seq)
            if doc is None:  # gone from the ledger (removed by hand): nothing to wait for
                log.error("actor=%s lane=%d custody entry %d of key %r has no message: released", w.actor, w.lane, seq, key)
                w.ledger.lanes.release(lane_id, seq, Tally())
                moved = True
                continue
            status = doc["status"]
            if tr.is_final(status):
                if w.ledger.release_custody(lane_id, doc) is not None:
                    log.info("actor=%s message=%s seq=%d left the custody of key %r (%s)", w.actor, doc["_id"], seq, key, status)
                moved = True
                continue
            if (tr.is_failed(status) and not doc.get("replay_requested")) or (tr.is_processing(status) and w.other_live_claim(doc)):
                return moved, True  # the key waits for its operator, or for another replica's attempt
            if not w.may_run():
                return moved, False
            if tr.is_failed(status):
                log.info("actor=%s message=%s replaying for key %r (requested by %s)", w.actor, doc["_id"], key,
                         (doc.get("replay_requested") or {}).get("by"))
            settled = w.run_custody(doc)
            moved = True
            if settled is None:
                return moved, True  # failed again, lost, or stopped: the key stays blocked
            w.ledger.release_custody(lane_id, settled)
        log.info("actor=%s key %r released", w.actor, key)
        return moved, True

    def resumable(self) -> bool:
        """Is there custody work a drain run should do, or wait for (a claim whose owner died
        ends with its lease)?"""
        lane = self.w.cursor.refresh_lane()
        entries = sorted(lane.get("custody", []), key=lambda e: e["s"])
        if not entries:
            return False
        docs = self.w.ledger.by_seqs(self.w.actor, self.w.lane, [e["s"] for e in entries])
        first: dict[str, dict[str, Any]] = {}
        for e in entries:
            if e["s"] in docs:
                first.setdefault(e["k"], docs[e["s"]])
        for doc in first.values():
            status = doc["status"]
            if tr.is_final(status) or tr.is_runnable(status) or (tr.is_failed(status) and doc.get("replay_requested")):
                return True
            if tr.is_processing(status):
                return True  # ours to take over once its lease ends, or another replica's to finish
        return False

