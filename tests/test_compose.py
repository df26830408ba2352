"""docker-compose.yml: validated by Docker Compose itself, and its topology checked in Python.

No Docker engine is needed: `docker compose config` / `docker-compose config` only parse,
interpolate and validate the file. Without a validator the test fails under CI (CI=true; the
Makefile installs Debian's docker-compose through scripts/ensure_tools.sh) and skips elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
APP_SERVICES = {
    "admin": ["python", "-m", "admin", "serve"],
    # every actor of connectors.examples, metrics for the compose network's Prometheus
    "connectors": ["python", "-m", "connectors", "run", "--metrics-port", "9100", "--metrics-addr", "0.0.0.0"],
    "backend-demo": ["python", "-m", "demo", "emit"],
}
APP_ENV = ["AMQP_URL", "RABBITMQ_API_URL", "RABBITMQ_API_USER", "RABBITMQ_API_PASSWORD",
           "MONGODB_URL", "MONGODB_DB", "FIFOQ_PREFIX", "FIFOQ_QUEUE_TYPE", "ADMIN_SECRET_KEY",
           "ADMIN_ENV"]
SECRETS = {"RABBITMQ_PASSWORD": "test-password", "RABBITMQ_ERLANG_COOKIE": "test-cookie",
           "ADMIN_SECRET_KEY": "test-secret"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _validator() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def validator() -> list[str]:
    cmd = _validator()
    if cmd is None:
        msg = ("no compose validator: neither `docker compose` nor `docker-compose` is installed "
               "(apt-get install docker-compose, or run scripts/ensure_tools.sh)")
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return cmd


def _config(validator: list[str], tmp_path: Path, env_overrides: dict[str, str],
            *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in SECRETS and not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.update(env_overrides)
    empty_env_file = tmp_path / "empty.env"   # ignore a developer's .env
    empty_env_file.write_text("")
    return subprocess.run([*validator, "--env-file", str(empty_env_file), "-f", str(COMPOSE),
                           "config", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid(validator, tmp_path):
    proc = _config(validator, tmp_path, SECRETS, "-q")
    assert proc.returncode == 0, proc.stderr
    services = _config(validator, tmp_path, SECRETS, "--services")
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) >= {"rabbitmq1", "rabbitmq2", "rabbitmq3", "mongo1",
                                            "mongo2", "mongo3", "mongo-init", "prometheus", *APP_SERVICES}


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_run_without_secrets(validator, tmp_path, missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    proc = _config(validator, tmp_path, env, "-q")
    assert proc.returncode != 0
    assert missing in proc.stderr


def _services(compose: dict, image_prefix: str) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if str(svc.get("image", "")).startswith(image_prefix)}


def test_three_node_rabbitmq_cluster(compose):
    nodes = _services(compose, "rabbitmq:")
    assert len(nodes) == 3, sorted(nodes)
    conf = (ROOT / "docker/rabbitmq/rabbitmq.conf").read_text()
    plugins = (ROOT / "docker/rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    assert re.search(r"^default_queue_type\s*=\s*quorum\s*$", conf, re.M)
    assert re.search(r"^cluster_formation\.peer_discovery_backend\s*=\s*classic_config", conf, re.M)
    peers = set(re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+\s*=\s*(\S+)", conf, re.M))
    cookies = set()
    for name, svc in nodes.items():
        assert svc["environment"]["RABBITMQ_NODENAME"] == f"rabbit@{svc['hostname']}"
        assert svc["environment"]["RABBITMQ_NODENAME"] in peers
        cookies.add(svc["environment"]["RABBITMQ_ERLANG_COOKIE"])
        assert "rabbitmq-diagnostics" in svc["healthcheck"]["test"]
        mounts = " ".join(svc["volumes"])
        assert "/var/lib/rabbitmq" in mounts and "rabbitmq.conf" in mounts and "enabled_plugins" in mounts
    assert len(peers) == 3
    assert len(cookies) == 1 and ":?" in cookies.pop()
    assert re.search(r"^prometheus\.tcp\.port\s*=\s*15692\s*$", conf, re.M)


def test_three_member_mongo_replica_set(compose):
    members = {name: svc for name, svc in _services(compose, "mongo:").items()
               if "--replSet" in svc.get("command", [])}
    assert len(members) == 3, sorted(members)
    for svc in members.values():
        assert svc["command"][svc["command"].index("--replSet") + 1] == "rs0"
        assert "healthcheck" in svc
    init = compose["services"]["mongo-init"]
    script = " ".join(init["command"])
    assert "rs.initiate" in script
    for svc in members.values():
        assert f"{svc['hostname']}:27017" in script
    assert set(init["depends_on"]) == set(members)


def test_app_services(compose):
    services = compose["services"]
    for name, command in APP_SERVICES.items():
        svc = services[name]
        assert svc["command"] == command
        assert "build" in svc or "image" in svc
        env = svc["environment"]
        for key in APP_ENV:
            assert key in env, f"{name} lacks {key}"
        assert env["ADMIN_ENV"] == "production"
        assert env["ADMIN_SECRET_KEY"].startswith("${ADMIN_SECRET_KEY:?")
        assert len(env["AMQP_URL"].split(",")) == 3
        assert "replicaSet=rs0" in env["MONGODB_URL"] and "w=majority" in env["MONGODB_URL"]
        for host in ("mongo1", "mongo2", "mongo3"):
            assert host in env["MONGODB_URL"]
        assert env["FIFOQ_QUEUE_TYPE"] == "quorum"
        deps = svc["depends_on"]
        assert deps["mongo-init"]["condition"] == "service_completed_successfully"
        for node in ("rabbitmq1", "rabbitmq2", "rabbitmq3"):
            assert deps[node]["condition"] == "service_healthy"


def test_env_example_lists_every_app_variable(compose):
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    used = set(compose["services"]["admin"]["environment"])
    assert used - listed == set()
    # every ${VAR} the compose file interpolates is documented too
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert interpolated - listed == set()


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_prometheus_scrapes_rabbitmq_console_and_connectors(compose):
    services = compose["services"]
    prom = services["prometheus"]
    assert str(prom["image"]).startswith("prom/prometheus:")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prom["volumes"]}  # source: target
    assert mounts["./docker/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    secrets_dir = mounts["./docker/prometheus/secrets"]
    assert all(p.startswith("127.0.0.1:") for p in prom.get("ports", [])), "published on localhost only"
    config = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    def targets(job: dict) -> set[str]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        return {t for sc in job["static_configs"] for t in sc["targets"]}

    # RabbitMQ's Prometheus plugin (enabled on every node, checked above) on each node's :15692
    nodes = _services(compose, "rabbitmq:")
    assert targets(jobs["rabbitmq"]) == {f"{svc['hostname']}:15692" for svc in nodes.values()}
    # The console's /metrics stays protected: Prometheus sends a viewer's token read from the mounted secrets
    admin_env = services["admin"]["environment"]
    assert targets(jobs["fifoq-console"]) == {f"admin:{admin_env['ADMIN_PORT']}"}
    assert admin_env["ADMIN_HOST"] == "0.0.0.0"
    assert str(admin_env.get("ADMIN_METRICS_PUBLIC", "0")) in ("0", "")
    auth = jobs["fifoq-console"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and auth["credentials_file"].startswith(secrets_dir + "/")
    ignored = (ROOT / "docker/prometheus/secrets/.gitignore").read_text().split()
    assert "*" in ignored, "the token must never be committed"
    # The connectors serve their metrics on the compose network
    connectors = services["connectors"]["command"]
    assert _option(connectors, "--metrics-addr") == "0.0.0.0"
    assert targets(jobs["fifoq-connectors"]) == {f"connectors:{_option(connectors, '--metrics-port')}"}
    deps = prom["depends_on"]
    assert {"rabbitmq1", "rabbitmq2", "rabbitmq3", "admin", "connectors"} <= set(deps)
