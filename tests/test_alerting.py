"""Alerts that reach people: the Prometheus alerting rules (checked and unit-tested with promtool,
from Debian's prometheus package), the Alertmanager configuration (amtool), their wiring in
docker-compose.yml, and the metrics the rules read, which the console and the notifier export."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient

from admin.notifier import Notifier, NotifierCollector
from admin.notify_settings import NotifySettings
from backend.app import Backend
from tests.helpers import Blocked, wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docker/prometheus/rules/fifoq.yml"
RULE_TESTS = ROOT / "docker/prometheus/rules/fifoq.test.yml"
ALERTMANAGER = ROOT / "docker/alertmanager/alertmanager.yml"
PROMETHEUS = ROOT / "docker/prometheus/prometheus.yml"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's {package} package (scripts/ensure_tools.sh, run by make test)",
                    pytrace=False)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_alerting_rules_pass_promtool_check_rules() -> None:
    proc = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerting_rules_unit_tests_pass_promtool_test_rules() -> None:
    """fifoq.test.yml: blocked past 5 min pages, a pause/resume does not raise no-consumer, a
    lasting absence does, a divergence must last, the watchers watch."""
    proc = run(tool("promtool", "prometheus"), "test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    defined = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"FifoqActorBlocked", "FifoqQueueDepth", "FifoqNoConsumer", "FifoqLedgerBrokerDivergence"} <= defined
    assert defined - tested <= {"FifoqBrokerAPIUnreachable", "FifoqNotificationsOwed"}, defined - tested


def test_alerting_prometheus_config_loads_the_rules_and_alertmanager() -> None:
    proc = run(tool("promtool", "prometheus"), "check", "config", "--syntax-only", str(PROMETHEUS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/fifoq.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["fifoq-notifier"]["static_configs"][0]["targets"] == ["notify:9100"]


def test_alerting_alertmanager_config_passes_amtool_and_routes_every_rule() -> None:
    proc = run(tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(ALERTMANAGER.read_text())
    severities = {r["labels"]["severity"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    routed = {m.split('"')[1] for r in config["route"]["routes"] for m in r["matchers"]}
    assert severities <= routed and config["route"]["group_by"] == ["alertname", "actor"]
    receiver = config["receivers"][0]
    assert receiver["slack_configs"][0]["api_url_file"].startswith("/etc/alertmanager/secrets/")
    ignored = (ROOT / "docker/alertmanager/secrets/.gitignore").read_text().split()
    assert "*" in ignored and "!.gitignore" in ignored


def test_alerting_compose_runs_alertmanager_and_one_notifier() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    am = services["alertmanager"]
    assert str(am["image"]).startswith("prom/alertmanager:")
    mounts = dict(v.split(":")[:2] for v in am["volumes"] if v.startswith("./"))
    assert mounts["./docker/alertmanager/alertmanager.yml"] == "/etc/alertmanager/alertmanager.yml"
    assert mounts["./docker/alertmanager/secrets"] == "/etc/alertmanager/secrets"
    prom = services["prometheus"]
    assert "./docker/prometheus/rules:/etc/prometheus/rules:ro" in prom["volumes"]
    assert "alertmanager" in prom["depends_on"] and "notify" in prom["depends_on"]
    notify = services["notify"]
    assert notify["command"][:4] == ["python", "-m", "admin", "notify"]
    assert "deploy" not in notify or notify["deploy"].get("replicas", 1) == 1
    env = notify["environment"]
    assert {"ADMIN_NOTIFY_URL", "ADMIN_NOTIFY_SECRET", "MONGODB_URL"} <= set(env)
    assert "AMQP_URL" not in env, "the notifier reads the ledger only: no broker user"
    assert "healthcheck" in notify


def rule_metrics() -> set[str]:
    exprs = " ".join(r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"])
    return set(re.findall(r"\b(fifoq_\w+)", exprs))


def test_alerting_rules_read_metrics_the_console_and_the_notifier_export(backend: Backend, viewer: FlaskClient,
                                                                         blocked: Blocked) -> None:
    """A rule on a metric nobody exports would never fire: every fifoq_* name of the rules is in
    a real scrape of the console (payment blocked) or of the notifier."""
    scraped: list[str] = []

    def with_broker_figures() -> bool:
        scraped[:] = [viewer.get("/metrics").get_data(as_text=True)]
        return 'fifoq_consistency_divergent{actor="payment"}' in scraped[0] and "fifoq_actor_consumers{" in scraped[0]

    wait_for(with_broker_figures, timeout=30, interval=0.5, what="the queue statistics in the console's metrics")
    console = scraped[0]
    assert re.search(r'^fifoq_blocks\{actor="payment"\} 1\.0$', console, re.M)
    assert re.search(r'^fifoq_block_oldest_seconds\{actor="payment"\} \d', console, re.M)
    assert 'fifoq_blocks{actor="shipping"}' not in console  # only actors with a block
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    notifier = Notifier(backend.ledger, backend.store, NotifySettings.from_env(
        {"ADMIN_NOTIFY_URL": "http://127.0.0.1:9/hook", "ADMIN_NOTIFY_SECRET": "a-secret-of-16-chars"}))
    registry.register(NotifierCollector(notifier))
    notifier_text = generate_latest(registry).decode()
    exported = set(re.findall(r"^(fifoq_\w+?)(?:_total)?[{ ]", console + notifier_text, re.M))
    missing = rule_metrics() - exported
    assert not missing, f"the rules read metrics nobody exports: {sorted(missing)}"
