"""docker-compose.yml with docker-compose.actors.yml (its connectors, written by `make compose`
from docker/actors.txt): validated by Docker Compose itself, and the topology checked in Python.

No Docker engine is needed: `docker compose config` / `docker-compose config` only parse,
interpolate and validate the files. Without a validator the test fails under CI (CI=true; the
Makefile installs Debian's docker-compose through scripts/ensure_tools.sh) and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from admin import deployment
from admin.provision import ActorPlan, grants
from backend.settings import Settings
from connectors.examples import registry as example_registry

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ACTORS_COMPOSE = ROOT / "docker-compose.actors.yml"
COMPOSE_FILES = (COMPOSE, ACTORS_COMPOSE)
# One connector service per actor of docker/actors.txt (the actors of connectors.examples, which
# the image runs), each with its own broker user.
CONNECTOR_ACTORS = tuple(a.name for a in deployment.read_actors(ROOT / "docker/actors.txt"))
CONNECTOR_SERVICES = {f"connector-{actor}": actor for actor in CONNECTOR_ACTORS}
APP_SERVICES = {
    "admin": ["python", "-m", "admin", "serve"],
    # metrics for the compose network's Prometheus
    **{name: ["python", "-m", "connectors", "run", actor, "--metrics-port", "9100", "--metrics-addr", "0.0.0.0"]
       for name, actor in CONNECTOR_SERVICES.items()},
    "backend-demo": ["python", "-m", "demo", "emit", "--metrics-port", "9100", "--metrics-addr", "0.0.0.0"],
}
APP_ENV = ["AMQP_URL", "MONGODB_URL", "MONGODB_DB", "FIFOQ_PREFIX", "FIFOQ_QUEUE_TYPE", "FIFOQ_DECLARE"]
# The settings that change behaviour in production: every process gets them as ${VAR:-default}.
PRODUCTION_ENV = ["FIFOQ_CONFIRM_TIMEOUT", "FIFOQ_PREFETCH", "FIFOQ_MAX_PAYLOAD_BYTES", "FIFOQ_DELIVERY_LIMIT",
                  "FIFOQ_TRANSIENT_RETRIES", "FIFOQ_TRANSIENT_BACKOFF", "FIFOQ_POLL_INTERVAL", "FIFOQ_GAP_GRACE",
                  "FIFOQ_RELAY_MIN_AGE", "FIFOQ_LANES", "FIFOQ_CLAIM_LEASE_SECONDS", "LOG_LEVEL"]
ADMIN_PRODUCTION_ENV = ["ADMIN_SESSION_MINUTES", "ADMIN_ALERT_BLOCKED_MINUTES", "ADMIN_ALERT_QUEUE_DEPTH",
                        "ADMIN_ALERT_NO_CONSUMER", "ADMIN_METRICS_PUBLIC", "ADMIN_LOGIN_LIMITS", "ADMIN_WORKERS", "ADMIN_THREADS", "ADMIN_TIMEOUT",
                        "ADMIN_GRACEFUL_TIMEOUT", "ADMIN_KEEPALIVE", "ADMIN_ACCESS_LOG"]
BROKER_PASSWORDS = {g.password_env: g for g in grants(Settings(), [ActorPlan(a) for a in CONNECTOR_ACTORS])}
SECRETS = {"RABBITMQ_PASSWORD": "test-password", "RABBITMQ_ERLANG_COOKIE": "test-cookie",
           "ADMIN_SECRET_KEY": "test-secret",
           **{name: f"pw-{grant.user}" for name, grant in BROKER_PASSWORDS.items()}}


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
            *args: str, files: tuple[Path, ...] = COMPOSE_FILES, env_file: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in SECRETS and not k.startswith(("COMPOSE_", "DOCKER_", "PROVISION_"))}
    env.update(env_overrides)
    if env_file is None:
        env_file = tmp_path / "empty.env"   # ignore a developer's .env
        env_file.write_text("")
    return subprocess.run([*validator, "--env-file", str(env_file), *(a for f in files for a in ("-f", str(f))),
                           "config", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _merge(base: dict, override: dict) -> dict:
    """Compose's merge of a second file, as far as these files need it: mappings merge, the rest
    (command, lists) is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_compose(*files: Path) -> dict:
    merged: dict = {}
    for f in files:
        merged = _merge(merged, yaml.safe_load(f.read_text()))
    return merged


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(*COMPOSE_FILES)


def test_compose_file_is_valid(validator, tmp_path):
    proc = _config(validator, tmp_path, SECRETS, "-q")
    assert proc.returncode == 0, proc.stderr
    services = _config(validator, tmp_path, SECRETS, "--services")
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) >= {"rabbitmq1", "rabbitmq2", "rabbitmq3", "mongo1",
                                            "mongo2", "mongo3", "mongo-init", "provision", "prometheus",
                                            *APP_SERVICES}


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
    for svc in nodes.values():
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
    assert {n for n in services if n.startswith("connector")} == set(CONNECTOR_SERVICES), \
        "one connector service per actor of connectors.examples"
    for name, command in APP_SERVICES.items():
        svc = services[name]
        assert svc["command"] == command
        assert "build" in svc or "image" in svc
        env = svc["environment"]
        for key in APP_ENV:
            assert key in env, f"{name} lacks {key}"
        assert len(env["AMQP_URL"].split(",")) == 3
        assert "replicaSet=rs0" in env["MONGODB_URL"] and "w=majority" in env["MONGODB_URL"]
        for host in ("mongo1", "mongo2", "mongo3"):
            assert host in env["MONGODB_URL"]
        assert env["FIFOQ_QUEUE_TYPE"] == "quorum"
        assert str(env["FIFOQ_DECLARE"]) == "0", "the provision service declares the topology"
        deps = svc["depends_on"]
        assert deps["mongo-init"]["condition"] == "service_completed_successfully"
        assert deps["provision"]["condition"] == "service_completed_successfully"
        # the console's secret key and the broker administrator stay with those who need them
        assert ("ADMIN_SECRET_KEY" in env) == (name == "admin")
        assert "RABBITMQ_PASSWORD" not in " ".join(str(v) for v in env.values()), name
    admin_env = services["admin"]["environment"]
    assert admin_env["ADMIN_ENV"] == "production"
    assert admin_env["ADMIN_SECRET_KEY"].startswith("${ADMIN_SECRET_KEY:?")
    # provision runs once the 3 nodes answer
    for node in ("rabbitmq1", "rabbitmq2", "rabbitmq3"):
        assert services["provision"]["depends_on"][node]["condition"] == "service_healthy"


_VAR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::([-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """What Compose makes of ${VAR}, ${VAR:-default} and ${VAR:?message} (enough for this file)."""
    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        assert op != "?", f"{name} is required"
        return arg if op == "-" else ""
    return _VAR.sub(one, value)


def _broker_identity(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return unquote(parts.username or ""), unquote(parts.password or ""), unquote(parts.path[1:])


def test_each_service_has_its_own_least_privilege_broker_user_on_the_fifoq_vhost(compose):
    """The users and password variables are exactly those `python -m admin provision` creates
    (admin.provision.grants); each service sees its own password and no other."""
    services = compose["services"]
    expected_user = {"admin": "fifoq-console", "backend-demo": "fifoq-backend",
                     **{name: f"fifoq-connector-{actor}" for name, actor in CONNECTOR_SERVICES.items()}}
    by_user = {g.user: g for g in BROKER_PASSWORDS.values()}
    assert set(expected_user.values()) == set(by_user), "every provisioned user is used, by one service"
    for name, user in expected_user.items():
        env = services[name]["environment"]
        identities = {_broker_identity(u) for u in _interpolate(env["AMQP_URL"], SECRETS).split(",")}
        assert identities == {(user, SECRETS[by_user[user].password_env], "fifoq")}, name
        others = set(BROKER_PASSWORDS) - {by_user[user].password_env}
        raw = " ".join(str(v) for v in env.values())
        assert not any(other in raw for other in others), f"{name} sees another component's password"
    admin_env = services["admin"]["environment"]
    assert _interpolate(admin_env["RABBITMQ_API_USER"], SECRETS) == "fifoq-console"
    assert _interpolate(admin_env["RABBITMQ_API_PASSWORD"], SECRETS) == SECRETS["PROVISION_CONSOLE_PASSWORD"]


def test_provision_service_creates_those_users_and_restricts_guest(compose):
    svc = compose["services"]["provision"]
    assert svc["restart"] == "no"
    command = svc["command"]
    assert command[:4] == ["python", "-m", "admin", "provision"]
    assert _option(command, "--guest") == "restrict"
    actors = [arg.partition(":")[0] for arg in command[4:] if not arg.startswith("-") and arg != "restrict"]
    assert sorted(actors) == sorted(CONNECTOR_ACTORS)
    env = svc["environment"]
    assert _interpolate(env["RABBITMQ_API_USER"], SECRETS) == "fifoq"  # the cluster's administrator
    assert _interpolate(env["RABBITMQ_API_PASSWORD"], SECRETS) == SECRETS["RABBITMQ_PASSWORD"]
    assert _interpolate(env["FIFOQ_VHOST"], SECRETS) == "fifoq"
    for password_env in BROKER_PASSWORDS:
        assert env[password_env].startswith(f"${{{password_env}:?"), password_env
    # the same queue settings as the clients, so that their passive checks find what it declared
    app_env = compose["x-app-env"]
    for key in ("FIFOQ_PREFIX", "FIFOQ_QUEUE_TYPE", "FIFOQ_DELIVERY_LIMIT", "FIFOQ_LANES"):
        assert env[key] == app_env[key]


def test_production_settings_are_passed_through_with_the_documented_defaults(compose):
    example = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    services = compose["services"]
    checks = [(name, key) for name in APP_SERVICES for key in PRODUCTION_ENV]
    checks += [("admin", key) for key in ADMIN_PRODUCTION_ENV]
    for name, key in checks:
        value = str(services[name]["environment"].get(key, ""))
        m = re.fullmatch(r"\$\{" + key + r":-([^}]*)\}", value)
        assert m, f"{name}: {key} should be ${{{key}:-default}}, not {value!r}"
        assert m.group(1) == example[key], f"{key}: default {m.group(1)!r} in compose, {example[key]!r} in .env.example"


def test_long_running_services_have_real_healthchecks(compose):
    services = compose["services"]
    for name in [*APP_SERVICES, "prometheus"]:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] == "CMD", f"{name} has no healthcheck"
    for name in CONNECTOR_SERVICES:
        port = _option(services[name]["command"], "--metrics-port")
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/metrics" in test and "fifoq_connector_consuming" in test
    assert "created_at" in " ".join(services["backend-demo"]["healthcheck"]["test"])
    assert "/-/healthy" in " ".join(services["prometheus"]["healthcheck"]["test"])


def test_readme_names_every_published_port(compose):
    published = set()
    for svc in compose["services"].values():
        for port in svc.get("ports", []):
            host_ip, host_port, _ = _interpolate(str(port), {}).split(":")
            assert host_ip == "127.0.0.1", port
            published.add(host_port)
    section = (ROOT / "README.md").read_text().split("## Docker Compose", 1)[1].split("\n## ", 1)[0]
    for port in published:
        assert re.search(rf"\b{port}\b", section), f"README's Docker Compose section does not mention port {port}"


def test_env_example_lists_every_app_variable(compose):
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    # one password per actor of docker/actors.txt: documented as a family, written by make compose
    assert "PROVISION_CONNECTOR_<ACTOR>_PASSWORD" in example

    def undocumented(names: set[str]) -> set[str]:
        return {n for n in names - listed if not re.fullmatch(r"PROVISION_CONNECTOR_[A-Z0-9_]+_PASSWORD", n)}

    used = {key for name in (*APP_SERVICES, "provision") for key in compose["services"][name]["environment"]}
    assert undocumented(used) == set()
    # every ${VAR} the compose files interpolate is documented too
    interpolated = {v for f in COMPOSE_FILES for v in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", f.read_text())}
    assert undocumented(interpolated) == set()


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
    assert _interpolate(str(admin_env.get("ADMIN_METRICS_PUBLIC", "0")), {}) in ("0", ""), "metrics behind login by default"
    auth = jobs["fifoq-console"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and auth["credentials_file"].startswith(secrets_dir + "/")
    ignored = (ROOT / "docker/prometheus/secrets/.gitignore").read_text().split()
    assert "*" in ignored, "the token must never be committed"
    # Every connector serves its metrics on the compose network, listed in the file_sd targets
    wanted = set()
    for name in CONNECTOR_SERVICES:
        command = services[name]["command"]
        assert _option(command, "--metrics-addr") == "0.0.0.0"
        wanted.add(f"{name}:{_option(command, '--metrics-port')}")
    assert mounts["./docker/prometheus/targets"] == "/etc/prometheus/targets"
    assert file_sd_targets(jobs["fifoq-connectors"], ROOT / "docker/prometheus/targets") == wanted
    # and the demo backend its emitted counters
    backend_command = services["backend-demo"]["command"]
    assert _option(backend_command, "--metrics-addr") == "0.0.0.0"
    assert targets(jobs["fifoq-backend"]) == {f"backend-demo:{_option(backend_command, '--metrics-port')}"}
    deps = prom["depends_on"]
    assert {"rabbitmq1", "rabbitmq2", "rabbitmq3", "admin", "backend-demo"} <= set(deps)


def file_sd_targets(job: dict, targets_dir: Path) -> set[str]:
    """The targets of a job's file_sd files (targets_dir is mounted at /etc/prometheus/targets)."""
    out: set[str] = set()
    for sd in job["file_sd_configs"]:
        for name in sd["files"]:
            assert name.startswith("/etc/prometheus/targets/"), name
            for group in json.loads((targets_dir / name.rsplit("/", 1)[1]).read_text()):
                out.update(group["targets"])
    return out


# -- one list of actors drives the deployment (admin/deployment.py, `make compose`) ---------------
def test_compose_actor_list_is_what_the_image_runs() -> None:
    """The image's connectors run connectors.examples: the list names exactly its actors."""
    assert sorted(CONNECTOR_ACTORS) == sorted(example_registry.actors)


def test_compose_generated_files_follow_the_actor_list() -> None:
    proc = subprocess.run([sys.executable, "-m", "admin.deployment", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_compose_adding_an_actor_to_the_list_gives_its_service_user_password_and_scrape_target(
        validator, tmp_path: Path, settings: Settings) -> None:
    """Given the list with one more actor (refunds, 2 lanes), when `make compose` runs, then the
    compose files have its connector service, connecting as its own broker user with the password
    written in .env; provisioning creates that user on the real broker with that password; and
    Prometheus scrapes it."""
    listed = tmp_path / "actors.txt"
    listed.write_text((ROOT / "docker/actors.txt").read_text() + "refunds:2\n")
    root = tmp_path / "deploy"
    (root / "docker/prometheus").mkdir(parents=True)
    for name in ("docker-compose.yml", "docker-compose.tls.yml", ".env.example"):
        shutil.copy(ROOT / name, root / name)
    env_file = root / ".env"
    env_file.write_text("PROVISION_CONNECTOR_PAYMENT_PASSWORD=kept0123\n")
    assert deployment.main(["--actors", str(listed), "--root", str(root), "--env-file", str(env_file)]) == 0

    dotenv = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", env_file.read_text(), re.M))
    password = dotenv["PROVISION_CONNECTOR_REFUNDS_PASSWORD"]
    assert re.fullmatch(r"[0-9a-f]{48}", password) and dotenv["PROVISION_CONNECTOR_PAYMENT_PASSWORD"] == "kept0123"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    # Compose accepts the files with that .env, and the new service connects as its own user.
    others = {k: v for k, v in SECRETS.items() if not k.startswith("PROVISION_")}
    proc = _config(validator, tmp_path, others, files=(root / "docker-compose.yml", root / "docker-compose.actors.yml"),
                   env_file=env_file)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    refunds = services["connector-refunds"]
    assert refunds["command"][:5] == ["python", "-m", "connectors", "run", "refunds"]
    assert {_broker_identity(u) for u in refunds["environment"]["AMQP_URL"].split(",")} == {
        ("fifoq-connector-refunds", password, "fifoq")}
    assert refunds["healthcheck"]["test"][0] == "CMD" and refunds["environment"]["FIFOQ_DECLARE"] == "0"
    provision_command = services["provision"]["command"]
    assert "refunds:2" in provision_command
    assert services["provision"]["environment"]["PROVISION_CONNECTOR_REFUNDS_PASSWORD"] == password
    # Prometheus scrapes it.
    prom = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "fifoq-connectors")
    assert "connector-refunds:9100" in file_sd_targets(job, root / "docker/prometheus/targets")
    # The TLS variant has it too.
    assert "connector-refunds" in yaml.safe_load((root / "docker-compose.actors.tls.yml").read_text())["services"]
    # The provision command, run on the real broker (a throw-away vhost), creates its user with
    # that password, and the user reads its own queue's lanes.
    from admin.provision import actors_from, provision
    from admin.rabbitmq_api import RabbitAdminAPI
    from backend.broker import connect
    from tests.conftest import API_AUTH, API_URL

    vhost = f"{settings.prefix}-compose"
    api = RabbitAdminAPI(API_URL, *API_AUTH)
    specs = [a for a in provision_command[4:] if not a.startswith("-") and a != "restrict"]
    try:
        provision(api, settings, actors_from(specs, settings), vhost=vhost, env=dotenv, guest="keep")
        user = f"{settings.prefix}-connector-refunds"
        as_refunds = settings.with_(amqp_urls=(f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}",), declare=False)
        conn = connect(as_refunds, "compose-refunds")
        try:
            channel = conn.channel()
            for lane in (0, 1):
                channel.queue_declare(settings.queue_name("refunds", lane), passive=True)
        finally:
            conn.close()
    finally:
        api.delete_vhost(vhost)
        for grant in grants(settings, actors_from(specs, settings)):
            api.delete_user(grant.user)
