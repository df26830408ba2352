"""Staged release of a failure group: replay one message first (the canary), the rest only once
it has succeeded; a canary that fails again stops the release and says why.

A plan lives in its own collection (`release_plans`) so that it goes on when the operator closes
the tab, and when the console restarts. The console advances the plans in one ReleaseDriver
thread, a background job of admin.server (one per console whatever the number of gunicorn
workers; `serve --dev` and the demo start it too), which looks for plans due every
ADMIN_RELEASE_POLL_SECONDS.

Several processes (console replicas, a worker taking over from one that died) may drive the same
plans, and each step happens exactly once:
- a process works on a plan only under a lease it took with one conditional update (`lease_until`
  past, or free); the lease outlives any step by far, and a process that died holding it only
  delays the plan until the lease expires;
- every transition (canary -> releasing -> released, or stopped / aborted) is a conditional
  update on the state it leaves and on the lease holder;
- each remaining message is marked `releasing` before its replay is asked and `released` after:
  a process that takes over a plan left half-done knows which replays may already be asked, and
  Operations.replay is idempotent for those.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask

from admin.failures import Group
from admin.server import background
from backend.app import Backend
from backend.audit import AuditEntry
from backend.errors import Conflict, NotFound, UnknownMessage, ValidationError
from backend.ledger import utcnow
from backend.settings import EnvSettings, setting
from backend.store import ASCENDING, DESCENDING, RETURN_AFTER, Store
from backend.values import Status

log = logging.getLogger(__name__)

COLLECTION = "release_plans"
LEASE_SECONDS = 30.0
DEFAULT_POLL_SECONDS = 1.0
ACTIVE = ("canary", "releasing")
FINISHED = ("released", "stopped", "aborted")
STILL_RUNNING = (Status.PENDING.value, Status.QUEUED.value, Status.PROCESSING.value, Status.DONE.value, Status.HELD.value)


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ReleasePlans:
    """Create, read, abort and advance staged releases."""

    def __init__(self, backend: Backend, store: Store) -> None:
        self.backend = backend
        self.store = store
        with store.op() as db:
            db[COLLECTION].create_index([("state", ASCENDING), ("lease_until", ASCENDING)], name="state_lease")
            db[COLLECTION].create_index([("created_at", DESCENDING)], name="created")
            db[COLLECTION].create_index([("fingerprint", ASCENDING), ("created_at", DESCENDING)], name="group")

    # -- reading ---------------------------------------------------------------------------
    def get(self, plan_id: str) -> dict[str, Any]:
        with self.store.op() as db:
            doc = db[COLLECTION].find_one({"_id": str(plan_id)})
        if doc is None:
            raise NotFound(f"unknown release {plan_id!r}")
        return doc

    def recent(self, fingerprint: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Active plans first, then the latest finished ones."""
        query: dict[str, Any] = {} if fingerprint is None else {"fingerprint": str(fingerprint)}
        with self.store.op() as db:
            docs = list(db[COLLECTION].find(query).sort("created_at", DESCENDING).limit(limit))
        return sorted(docs, key=lambda d: d["state"] not in ACTIVE)

    def with_statuses(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The plan with each message's current status from the ledger (for pages and the API)."""
        ids = [plan["canary"]["message_id"]] + [i["message_id"] for i in plan["items"]]
        status = {d["_id"]: d["status"] for d in self.backend.ledger.by_ids(ids)}
        out = dict(plan)
        out["canary"] = dict(plan["canary"], status=status.get(plan["canary"]["message_id"], "unknown"))
        out["items"] = [dict(i, status=status.get(i["message_id"], "unknown")) for i in plan["items"]]
        out["released"] = sum(1 for i in plan["items"] if i["state"] == "released")
        out["active"] = plan["state"] in ACTIVE
        return out

    # -- starting and stopping -----------------------------------------------------------------
    def start(self, group: Group, by: str, canary_id: str | None = None) -> dict[str, Any]:
        """Replay the canary now; the driver releases the rest once it has succeeded."""
        members = group.members
        if canary_id is None:
            canary = members[0]
        else:
            found: dict[str, Any] | None = next((m for m in members if m["id"] == canary_id), None)
            if found is None:
                raise ValidationError(f"the canary must be a failed message of the group; {canary_id!r} is not")
            canary = found
        with self.store.op() as db:
            running = db[COLLECTION].find_one({"fingerprint": group.fingerprint, "state": {"$in": list(ACTIVE)}})
        if running is not None:
            raise Conflict(f"release {running['_id']} of this group is still running: wait for it or abort it")
        doc = self.backend.ledger.message(canary["id"])
        now = utcnow()
        plan: dict[str, Any] = {
            "_id": "rel-" + uuid.uuid4().hex[:12],
            "fingerprint": group.fingerprint,
            "error": f"{group.type}: {group.message}",
            "state": "canary",
            "created_by": by,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
            "outcome": f"canary {canary['actor']} #{canary['seq']} replayed; the other {len(members) - 1} wait for its result",
            "canary": {"message_id": canary["id"], "actor": canary["actor"], "seq": canary["seq"], "key": canary.get("key"),
                       "attempts_before": int(doc.get("attempts", 0))},
            "items": [{"message_id": m["id"], "actor": m["actor"], "seq": m["seq"], "key": m.get("key"),
                       "state": "waiting", "reason": None, "at": None} for m in members if m["id"] != canary["id"]],
            "lease_owner": None,
            "lease_until": None,
        }
        with self.store.op() as db:
            db[COLLECTION].insert_one(plan)
        self.backend.audit.record(AuditEntry(by, "release.start", canary["actor"], canary["id"], details={
            "release": plan["_id"], "fingerprint": group.fingerprint, "canary": canary["id"],
            "waiting": [i["message_id"] for i in plan["items"]]}))
        try:
            self.backend.operations.replay(canary["id"], by)
        except (Conflict, UnknownMessage) as exc:
            self._finish(plan["_id"], None, "canary", "stopped", f"the canary could not be replayed: {exc}")
        log.info("release=%s group=%s started by %s: canary actor=%s message=%s", plan["_id"], group.fingerprint, by,
                 canary["actor"], canary["id"])
        return self.get(plan["_id"])

    def abort(self, plan_id: str, by: str) -> dict[str, Any]:
        """Stop a running plan: nothing more is released (replays already asked go on)."""
        plan = self.get(plan_id)
        if plan["state"] not in ACTIVE:
            raise Conflict(f"release {plan_id} is already {plan['state']}")
        if not self._finish(plan_id, None, plan["state"], "aborted", f"aborted by {by}"):
            raise Conflict(f"release {plan_id} moved on meanwhile: reload")
        self.backend.audit.record(AuditEntry(by, "release.abort", details={"release": plan_id, "fingerprint": plan["fingerprint"]}))
        return self.get(plan_id)

    # -- advancing (the driver) ------------------------------------------------------------------
    def advance_due(self, owner: str) -> int:
        """Advance every active plan whose lease is free; returns how many this call worked on."""
        now = utcnow()
        with self.store.op() as db:
            due = [d["_id"] for d in db[COLLECTION].find(
                {"state": {"$in": list(ACTIVE)}, "$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]}, {"_id": 1})]
        worked = 0
        for plan_id in due:
            plan = self._lease(plan_id, owner)
            if plan is None:
                continue  # another process took it first
            worked += 1
            try:
                self._step(plan, owner)
            finally:
                with self.store.op() as db:
                    db[COLLECTION].update_one({"_id": plan_id, "lease_owner": owner},
                                              {"$set": {"lease_owner": None, "lease_until": None}})
        return worked

    def _lease(self, plan_id: str, owner: str) -> dict[str, Any] | None:
        now = utcnow()
        with self.store.op() as db:
            return db[COLLECTION].find_one_and_update(
                {"_id": plan_id, "state": {"$in": list(ACTIVE)},
                 "$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]},
                {"$set": {"lease_owner": owner, "lease_until": now + timedelta(seconds=LEASE_SECONDS)}},
                return_document=RETURN_AFTER,
            )

    def _finish(self, plan_id: str, owner: str | None, from_state: str, to_state: str, outcome: str) -> bool:
        query: dict[str, Any] = {"_id": plan_id, "state": from_state}
        if owner is not None:
            query["lease_owner"] = owner
        now = utcnow()
        fields: dict[str, Any] = {"state": to_state, "outcome": outcome, "updated_at": now}
        if to_state in FINISHED:
            fields["finished_at"] = now
        with self.store.op() as db:
            return db[COLLECTION].update_one(query, {"$set": fields}).modified_count == 1

    def _step(self, plan: dict[str, Any], owner: str) -> None:
        if plan["state"] == "canary":
            verdict = self._canary_verdict(plan)
            if verdict is None:
                return  # still running
            ok, why = verdict
            if not ok:
                if self._finish(plan["_id"], owner, "canary", "stopped", why):
                    self._audit(plan, "release.stop", outcome=why)
                    log.warning("release=%s group=%s stopped: %s", plan["_id"], plan["fingerprint"], why)
                return
            if not self._finish(plan["_id"], owner, "canary", "releasing", why):
                return
            self._audit(plan, "release.canary", outcome=why)
            plan = self.get(plan["_id"])
        if plan["state"] == "releasing":
            self._release_rest(plan, owner)

    def _canary_verdict(self, plan: dict[str, Any]) -> tuple[bool, str] | None:
        """(succeeded, why) once the canary has an outcome; None while it runs."""
        c = plan["canary"]
        label = f"canary {c['actor']} #{c['seq']}"
        try:
            doc = self.backend.ledger.message(c["message_id"])
        except UnknownMessage:
            return False, f"{label} is not in the ledger any more; nothing else was released"
        status = doc["status"]
        if status == Status.DONE.value:
            return True, f"{label} succeeded; releasing the other {len(plan['items'])}"
        if status == Status.CANCELLED.value:
            return False, f"{label} was cancelled; nothing else was released"
        if status == Status.FAILED.value and doc.get("replay_requested") is None and int(doc.get("attempts", 0)) > c["attempts_before"]:
            err = doc.get("last_error") or {}
            return False, (f"{label} failed again (attempt {doc.get('attempts')}): {err.get('type')}: {err.get('message')}; "
                           f"the other {len(plan['items'])} stay failed, nothing else was released")
        return None

    def _release_rest(self, plan: dict[str, Any], owner: str) -> None:
        pid = plan["_id"]
        for index, item in enumerate(plan["items"]):
            if item["state"] not in ("waiting", "releasing"):
                continue
            previously_started = item["state"] == "releasing"
            with self.store.op() as db:
                taken = db[COLLECTION].update_one(
                    {"_id": pid, "state": "releasing", "lease_owner": owner,
                     f"items.{index}.state": {"$in": ["waiting", "releasing"]}},
                    {"$set": {f"items.{index}.state": "releasing", f"items.{index}.at": utcnow()}},
                ).modified_count == 1
            if not taken:
                return  # aborted, or no longer ours
            state, reason = self._replay(item, plan["created_by"], previously_started)
            with self.store.op() as db:
                db[COLLECTION].update_one({"_id": pid, "lease_owner": owner},
                                          {"$set": {f"items.{index}.state": state, f"items.{index}.reason": reason,
                                                    f"items.{index}.at": utcnow(), "updated_at": utcnow()}})
        plan = self.get(pid)
        released = sum(1 for i in plan["items"] if i["state"] == "released")
        skipped = [i for i in plan["items"] if i["state"] == "skipped"]
        outcome = f"canary succeeded; {released} released" + (f", {len(skipped)} skipped (see each)" if skipped else "")
        if self._finish(pid, owner, "releasing", "released", outcome):
            self._audit(plan, "release.done", outcome=outcome)
            log.info("release=%s group=%s done: %s", pid, plan["fingerprint"], outcome)

    def _replay(self, item: dict[str, Any], by: str, previously_started: bool) -> tuple[str, str | None]:
        try:
            self.backend.operations.replay(item["message_id"], by)
            return "released", None
        except UnknownMessage:
            return "skipped", "not in the ledger any more"
        except Conflict:
            status = self.backend.ledger.message(item["message_id"])["status"]
            if previously_started and status in STILL_RUNNING:
                return "released", None  # asked by a process that stopped before recording it
            return "skipped", f"it is {status} now: repaired otherwise"

    def _audit(self, plan: dict[str, Any], action: str, **details: Any) -> None:
        c = plan["canary"]
        self.backend.audit.record(AuditEntry(plan["created_by"], action, c["actor"], c["message_id"], details=dict(
            details, release=plan["_id"], fingerprint=plan["fingerprint"])))


class ReleaseSettings(EnvSettings):
    # 0: this console drives no release (another one must).
    poll_seconds: float = setting("ADMIN_RELEASE_POLL_SECONDS", DEFAULT_POLL_SECONDS, ge=0, le=60)


class ReleaseDriver:
    """Advances the plans every `interval` seconds while `run(stop)` runs (a console background job)."""

    def __init__(self, plans: ReleasePlans, interval: float) -> None:
        # Weak: the thread ends once its app is gone (tests build many apps in one process).
        self._plans = weakref.ref(plans)
        self.interval = interval
        self.owner = ""

    def run(self, stop: threading.Event) -> None:
        self.owner = process_owner()
        log.info("release driver %s started (every %.1fs)", self.owner, self.interval)
        while not stop.wait(self.interval):
            plans = self._plans()
            if plans is None:
                return
            try:
                plans.advance_due(self.owner)
            except Exception:  # the ledger may be down for a while: keep driving once it is back
                log.exception("release driver %s: advancing the plans failed", self.owner)
            del plans


def init_app(app: Flask, env: Mapping[str, str], store: Store) -> None:
    """Read ADMIN_RELEASE_POLL_SECONDS (ConfigError on a bad value), keep the plans and the driver
    in the app's extensions, and register the driver as a background job of the console."""
    cfg = ReleaseSettings.from_env(env)
    plans = ReleasePlans(app.extensions["fifoq"], store)
    driver = ReleaseDriver(plans, cfg.poll_seconds)
    app.extensions["fifoq_releases"] = plans
    app.extensions["fifoq_release_driver"] = driver
    if cfg.poll_seconds > 0:
        background(app, "release-driver", driver.run)
