"""The console's monitoring endpoints: /metrics (Prometheus), /api/alerts, /api/charts.

/metrics is read like the overview: it needs the viewer role, by session or by
`Authorization: Bearer <token>` (what a Prometheus scrape job sends with `authorization:
credentials_file:`), unless ADMIN_METRICS_PUBLIC=1 opens it to anyone who can reach the console
(then keep the console's port on a private network). Each scrape reads the ledger and the
management API once, as the overview does:

- fifoq_actor_blocked{actor} (0/1), fifoq_actor_blocked_seconds{actor}, fifoq_actor_paused{actor}
- fifoq_ledger_messages{actor,status}: messages in the ledger by status
- fifoq_queue_messages{actor,state=ready|unacked}, fifoq_actor_consumers{actor}: from the broker,
  absent (never 0) while the management API is unreachable or has no figure yet
- fifoq_consistency_divergent{actor}: 1 while ledger and broker disagree persistently (admin.consistency)
- fifoq_blocks{actor}, fifoq_block_oldest_seconds{actor}: current blocks of the actor and of its
  ordering keys (Ledger.blocks()), and the age of the oldest (only for actors with a block)
- fifoq_alert_firing{rule,actor} = 1 for each firing alert; fifoq_alerts_firing{rule}: their count
- fifoq_console_ledger_up, fifoq_console_broker_api_up, fifoq_console_scrape_seconds

Each app has its own CollectorRegistry (app.extensions["fifoq_metrics"]): no global state, so
several apps (tests) live in one process.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from admin import charts, timefmt
from admin.alerts import AlertRules, Rule, evaluate
from admin.auth import require_role
from admin.board import LEDGER_DOWN, Overview, build_overview
from admin.users import Role
from admin.watch import Watch, request_sample
from backend.errors import ValidationError
from backend.ledger import utcnow
from backend.values import Status

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


def init_app(app: Flask, env: Mapping[str, str]) -> None:
    """Read the alert rules (ConfigError on bad values), build the app's registry and register
    the routes. ADMIN_METRICS_PUBLIC is read with the console's settings (admin.config)."""
    app.config["ADMIN_METRICS_PUBLIC"] = app.config["ADMIN"].metrics_public
    app.extensions["fifoq_alert_rules"] = AlertRules.from_env(env)
    app.extensions["fifoq_watch"] = Watch(app.extensions["fifoq_users"].store, app.extensions["fifoq_alert_rules"].persist_seconds,
                                          app.extensions["fifoq_alert_rules"].broker_lag_seconds)
    registry = CollectorRegistry()
    registry.register(ConsoleCollector(app))
    app.extensions["fifoq_metrics"] = registry
    app.register_blueprint(bp)


def rules() -> AlertRules:
    return current_app.extensions["fifoq_alert_rules"]


def _queue_metrics(name: str, queue: dict[str, Any] | None, depth: GaugeMetricFamily, consumers: GaugeMetricFamily) -> None:
    """The broker's figures of one actor's queues (absent until the management API has them)."""
    if not queue:
        return
    for key, state in (("messages_ready", "ready"), ("messages_unacknowledged", "unacked")):
        if queue[key] is not None:
            depth.add_metric([name, state], float(queue[key]))
    if queue["consumers"] is not None:
        consumers.add_metric([name], float(queue["consumers"]))


class ConsoleCollector(Collector):
    """Reads the board (ledger + management API) at each scrape."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.monotonic()
        backend, api = self.app.extensions["fifoq"], self.app.extensions["fifoq_mgmt"]
        board = build_overview(backend, api)
        firing = evaluate(self.app.extensions["fifoq_alert_rules"], board.actors, board.broker_error, request_sample())

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        blocked = gauge("fifoq_actor_blocked", "1 while the actor is blocked on a failed message.", ["actor"])
        blocked_s = gauge("fifoq_actor_blocked_seconds", "How long the actor has been blocked (0 when not).", ["actor"])
        paused = gauge("fifoq_actor_paused", "1 while an operator has paused the actor.", ["actor"])
        ledger = gauge("fifoq_ledger_messages", "Messages in the ledger by status.", ["actor", "status"])
        depth = gauge("fifoq_queue_messages", "Messages in the actor's queue(s) on the broker.", ["actor", "state"])
        consumers = gauge("fifoq_actor_consumers", "Consumers attached to the actor's queue(s).", ["actor"])
        divergent = gauge("fifoq_consistency_divergent", "1 while the ledger and the broker disagree on the actor's "
                          "queue beyond the broker's statistics lag, persistently (the divergence alert).", ["actor"])
        for row in board.actors:
            name = row["name"]
            if row.get("counts") is not None:  # ledger figures
                blocked.add_metric([name], 1.0 if row["blocked"] else 0.0)
                blocked_s.add_metric([name], float(row["blocked_for_seconds"] or 0.0))
                paused.add_metric([name], 1.0 if row["paused"] else 0.0)
                for status in Status:
                    ledger.add_metric([name, status.value], float(row["counts"].get(status.value, 0)))
            _queue_metrics(name, row.get("queue"), depth, consumers)
            check = row.get("consistency") or {}
            if check.get("ok") is not None:
                divergent.add_metric([name], 0.0 if check["ok"] else 1.0)
        alert = gauge("fifoq_alert_firing", "1 for each alert currently firing (see /api/alerts).", ["rule", "actor"])
        per_rule = gauge("fifoq_alerts_firing", "Number of alerts firing per rule.", ["rule"])
        for a in firing:
            alert.add_metric([a.rule.value, a.actor], 1.0)
        for rule in Rule:
            per_rule.add_metric([rule.value], float(sum(1 for a in firing if a.rule is rule)))
        yield from (blocked, blocked_s, paused, ledger, depth, consumers, divergent, alert, per_rule)
        if not board.ledger_error:
            yield from _block_gauges(backend)
        yield GaugeMetricFamily("fifoq_console_ledger_up", "1 when the console could read the ledger.",
                                value=0.0 if board.ledger_error else 1.0)
        yield GaugeMetricFamily("fifoq_console_broker_api_up", "1 when the management API answered.",
                                value=0.0 if board.broker_error else 1.0)
        yield GaugeMetricFamily("fifoq_console_scrape_seconds", "Time spent reading the ledger and broker for this scrape.",
                                value=time.monotonic() - started)


def _block_gauges(backend: Any) -> Iterator[GaugeMetricFamily]:
    """Blocks of whole actors and of ordering keys (Ledger.blocks()): how many, and the oldest's age."""
    count = GaugeMetricFamily("fifoq_blocks", "Current blocks of the actor: 1 for the whole actor, or one per blocked "
                              "ordering key.", labels=["actor"])
    oldest = GaugeMetricFamily("fifoq_block_oldest_seconds", "Age of the actor's oldest current block (the actor's "
                               "or one of its keys').", labels=["actor"])
    now = utcnow()
    per_actor: dict[str, list[float]] = {}
    try:
        blocks = backend.ledger.blocks()
    except LEDGER_DOWN as exc:
        log.warning("metrics: blocks unavailable: %s", exc)
        return
    for b in blocks:
        ages = per_actor.setdefault(b["actor"], [])
        ages.append(max(0.0, (now - b["since"]).total_seconds()) if b.get("since") else 0.0)
    for actor, ages in sorted(per_actor.items()):
        count.add_metric([actor], float(len(ages)))
        oldest.add_metric([actor], max(ages))
    yield count
    yield oldest


@bp.route("/metrics")
def metrics() -> Any:
    """curl -H 'Authorization: Bearer fq_...' http://127.0.0.1:5000/metrics"""
    if current_app.config.get("ADMIN_METRICS_PUBLIC"):
        return _exposition()
    return require_role(Role.VIEWER)(_exposition)()


def _exposition() -> Response:
    return Response(generate_latest(current_app.extensions["fifoq_metrics"]), mimetype=CONTENT_TYPE_LATEST)


def alerts_of(board: Overview) -> dict[str, Any]:
    firing = evaluate(rules(), board.actors, board.broker_error, request_sample())
    return {"rules": rules().to_dict(), "firing": firing, "ledger_error": board.ledger_error,
            "broker_error": board.broker_error}


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    # The overview template calls fifoq_alerts(board): no second read of the ledger or broker.
    return {"fifoq_alerts": alerts_of}


@bp.route("/api/alerts")
@require_role(Role.VIEWER)
def alerts_api() -> Any:
    """curl -H 'Authorization: Bearer fq_...' http://127.0.0.1:5000/api/alerts"""
    board = build_overview(current_app.extensions["fifoq"], current_app.extensions["fifoq_mgmt"])
    out = alerts_of(board)
    out["firing"] = [a.to_dict() for a in out["firing"]]
    out["generated_at"] = timefmt.iso(board.generated_at)
    return jsonify(out), 503 if board.ledger_error else 200


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}")
    return value


@bp.route("/api/charts")
@require_role(Role.VIEWER)
def charts_data() -> Any:
    """curl -H 'Authorization: Bearer fq_...' 'http://127.0.0.1:5000/api/charts?minutes=60&top=8'

    Per-minute processed, failed and backlog series per actor (see admin.charts)."""
    minutes = _int_arg("minutes", charts.DEFAULT_MINUTES, 1, charts.MAX_MINUTES)
    top = _int_arg("top", charts.DEFAULT_TOP, 0, 50)
    actor = request.args.get("actor", "").strip() or None
    return jsonify(charts.activity(current_app.extensions["fifoq"], minutes=minutes, top=top, actor=actor))
