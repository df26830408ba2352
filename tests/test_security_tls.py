"""TLS to a real RabbitMQ node: AMQPS with certificate verification (and a client certificate),
the management API over HTTPS. The node is started by scripts/tls_node.sh (certificates from
scripts/gen_certs.sh) once per test session, and stopped afterwards if this session started it."""
from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from admin.rabbitmq_api import BrokerAPIUnavailable, RabbitAPI
from backend.app import Backend, open_ledger
from backend.broker import connect, tls_context
from backend.errors import BrokerUnavailable, ConfigError
from backend.settings import Settings
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.helpers import Recorder, wait_for

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / ".certs"
AMQPS_URL = "amqps://guest:guest@localhost:5691/%2F"
HTTPS_API = "https://localhost:15691"


@pytest.fixture(scope="session")
def tls_node() -> Iterator[Path]:
    script = ROOT / "scripts" / "tls_node.sh"
    running = subprocess.run([script, "status"], capture_output=True, text=True).returncode == 0
    if not running:
        done = subprocess.run([script, "start"], capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"could not start the TLS node: {done.stdout}{done.stderr}", pytrace=False)
    yield CERTS
    if not running:
        subprocess.run([script, "stop"], capture_output=True, text=True, timeout=120)


def tls_env(certs: Path, **extra: str) -> dict[str, str]:
    env = {
        "AMQP_URL": AMQPS_URL,
        "AMQP_CA_FILE": str(certs / "ca.pem"),
        "AMQP_CERT_FILE": str(certs / "client.pem"),
        "AMQP_KEY_FILE": str(certs / "client.key"),
        "RABBITMQ_API_URL": HTTPS_API,
        "RABBITMQ_API_CA": str(certs / "ca.pem"),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v}


@pytest.fixture
def tls_settings(tls_node: Path, settings: Settings) -> Iterator[Settings]:
    base = Settings.from_env(tls_env(tls_node))
    s = base.with_(prefix=settings.prefix, mongodb_url=settings.mongodb_url, mongodb_db=settings.mongodb_db,
                   poll_interval=0.1, relay_min_age=0.0)
    yield s
    api = (HTTPS_API, ("guest", "guest"), str(tls_node / "ca.pem"))
    for kind in ("queues", "exchanges"):
        items = requests.get(f"{api[0]}/api/{kind}/%2F", auth=api[1], verify=api[2], timeout=10).json()
        for item in items:
            if item["name"].startswith(s.prefix + "."):
                name = requests.utils.quote(item["name"], safe="")
                requests.delete(f"{api[0]}/api/{kind}/%2F/{name}", auth=api[1], verify=api[2], timeout=10)


@pytest.fixture(scope="session")
def other_ca(tls_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated development CA (and client certificate)."""
    d = tmp_path_factory.mktemp("other-ca")
    subprocess.run([ROOT / "scripts" / "gen_certs.sh"], env={"CERTS_DIR": str(d), "PATH": "/usr/bin:/bin"},
                   check=True, capture_output=True)
    return d


def test_security_tls_pipeline_over_amqps_with_verified_certificates(tls_settings: Settings) -> None:
    """Given the TLS-only node, when the backend emits and a connector consumes over AMQPS with
    certificate verification on, then the messages arrive in order."""
    be = Backend(tls_settings)
    try:
        be.subscriptions.actor("payment")
        be.subscriptions.subscribe("payment", "order.paid")
        be.declare()
        for i in range(3):
            be.emit_event("order.paid", {"n": i})
        be.emitter.flush()  # publish confirms are recorded off emit's path
        assert {m["status"] for m in be.ledger.find(actor="payment", limit=10)[0]} == {"queued"}
    finally:
        be.close()
    recorder = Recorder()
    reg = Registry()
    reg.register("payment", recorder)
    Runtime(tls_settings, open_ledger(tls_settings), reg, actors=["payment"]).run(drain=True, timeout=60)
    assert recorder.payloads() == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_security_tls_connects_by_ip_address_too(tls_settings: Settings, tls_node: Path) -> None:
    """An amqps:// URL with the broker's address rather than a name connects with hostname
    verification on (the certificate names IP:127.0.0.1), over TLS, with the client certificate:
    as the broker itself reports the connection."""
    by_ip = tls_settings.with_(amqp_urls=("amqps://guest:guest@127.0.0.1:5691/%2F",))
    assert tls_context(by_ip).check_hostname
    name = f"tls-probe-{by_ip.prefix}"
    conn = connect(by_ip, name)
    try:
        assert conn.is_open
        seen: list[dict] = []

        def reported() -> bool:
            found = requests.get(f"{HTTPS_API}/api/connections", auth=("guest", "guest"), timeout=10,
                                 verify=str(tls_node / "ca.pem")).json()
            seen[:] = [c for c in found if (c.get("client_properties") or {}).get("connection_name") == name]
            return bool(seen)

        wait_for(reported, timeout=30, what="the broker to list the connection")
        info = seen[0]
        assert info["ssl"] is True and info["ssl_protocol"].startswith("tlsv1.")
        assert info["host"] == "127.0.0.1" and info["port"] == 5691
        assert "fifoq-client" in info["peer_cert_subject"]  # the client certificate was presented
    finally:
        conn.close()


def test_security_tls_wrong_ca_is_refused(tls_settings: Settings, other_ca: Path) -> None:
    with pytest.raises(BrokerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        connect(tls_settings.with_(amqp_ca_file=str(other_ca / "ca.pem")), "tls-wrong-ca")


def test_security_tls_system_trust_store_does_not_trust_the_dev_ca(tls_settings: Settings) -> None:
    """amqps:// without AMQP_CA_FILE verifies against the system's CAs: a private CA fails."""
    with pytest.raises(BrokerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        connect(tls_settings.with_(amqp_ca_file=""), "tls-system-ca")


def test_security_tls_broker_requires_a_client_certificate(tls_settings: Settings, other_ca: Path) -> None:
    with pytest.raises(BrokerUnavailable):
        connect(tls_settings.with_(amqp_cert_file="", amqp_key_file=""), "tls-no-client-cert")
    with pytest.raises(BrokerUnavailable):  # a client certificate from another CA
        connect(tls_settings.with_(amqp_cert_file=str(other_ca / "client.pem"),
                                   amqp_key_file=str(other_ca / "client.key")), "tls-foreign-client-cert")


def test_security_tls_node_has_no_plain_text_listener(tls_settings: Settings) -> None:
    with pytest.raises((BrokerUnavailable, ConfigError)):
        connect(tls_settings.with_(amqp_urls=("amqp://guest:guest@127.0.0.1:5691/%2F",)), "tls-plain")


def test_security_tls_context_always_verifies(tls_settings: Settings) -> None:
    ctx = tls_context(tls_settings)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_security_tls_management_api_over_https_verified(tls_node: Path, other_ca: Path) -> None:
    settings = Settings.from_env(tls_env(tls_node))
    assert settings.api_verify == str(tls_node / "ca.pem")
    health = RabbitAPI.from_settings(settings).health()
    assert health["nodes_running"] and health["url"] == HTTPS_API
    with pytest.raises(BrokerAPIUnavailable, match="unreachable"):
        RabbitAPI(HTTPS_API, "guest", "guest", verify=str(other_ca / "ca.pem")).health()
    with pytest.raises(BrokerAPIUnavailable, match="unreachable"):
        RabbitAPI(HTTPS_API, "guest", "guest").health()  # the system CAs do not know the dev CA


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"AMQP_URL": "amqp://guest:guest@localhost/%2F", "AMQP_CA_FILE": "ca.pem"}, "amqps://"),
        ({"AMQP_URL": AMQPS_URL, "AMQP_CERT_FILE": "client.pem"}, "go together"),
        ({"AMQP_URL": AMQPS_URL, "AMQP_CA_FILE": "/nonexistent/ca.pem"}, "readable"),
        ({"AMQP_URL": AMQPS_URL + "?ssl_options=%7B%27cert_reqs%27%3A0%7D"}, "ssl_options"),
        ({"AMQP_URL": AMQPS_URL, "FIFOQ_DECLARE": "maybe"}, "FIFOQ_DECLARE"),
    ],
)
def test_security_tls_settings_fail_fast(tls_node: Path, env: dict[str, str], needle: str) -> None:
    env = {k: (str(tls_node / v) if k.endswith("_FILE") and not v.startswith("/") else v) for k, v in env.items()}
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_security_tls_gen_certs_is_idempotent(tmp_path: Path) -> None:
    env = {"CERTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([ROOT / "scripts" / "gen_certs.sh", "backend"], env=env, check=True, capture_output=True)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key", "client-backend.pem"} <= set(first)
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"
    subprocess.run([ROOT / "scripts" / "gen_certs.sh"], env=env, check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.pem", tmp_path / "server.pem",
                             tmp_path / "client-backend.pem"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_security_tls_compose_override_is_valid(tmp_path: Path) -> None:
    """docker-compose.tls.yml (and the connectors' docker-compose.actors.tls.yml) merge onto
    docker-compose.yml and docker-compose.actors.yml: TLS ports, certificate mounts and amqps://
    with a CA for every application service."""
    import shutil

    import yaml

    cmd = (["docker-compose"] if shutil.which("docker-compose") else
           ["docker", "compose"] if shutil.which("docker") and subprocess.run(
               ["docker", "compose", "version"], capture_output=True).returncode == 0 else None)
    if cmd is None:
        msg = "no docker compose validator installed (scripts/ensure_tools.sh installs docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    from tests.test_compose import SECRETS

    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **SECRETS, "HOME": str(tmp_path)}
    files = ("docker-compose.yml", "docker-compose.actors.yml", "docker-compose.tls.yml", "docker-compose.actors.tls.yml")
    out = subprocess.run([*cmd, "--env-file", str(empty), *(a for f in files for a in ("-f", f)), "config"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    for node in ("rabbitmq1", "rabbitmq2", "rabbitmq3"):
        mounts = " ".join(str(v) for v in services[node]["volumes"])
        assert "/etc/rabbitmq/conf.d/90-tls.conf" in mounts and "/etc/rabbitmq/tls/server.key" in mounts
    from tests.test_compose import APP_SERVICES

    for app in (*APP_SERVICES, "provision"):
        env_ = services[app]["environment"]
        assert all(u.startswith("amqps://") for u in env_["AMQP_URL"].split(","))
        assert env_["AMQP_CA_FILE"] == "/certs/ca.pem" and env_["RABBITMQ_API_URL"].startswith("https://")
    conf = (ROOT / "docker" / "rabbitmq" / "tls.conf").read_text()
    assert "listeners.tcp = none" in conf and "fail_if_no_peer_cert = true" in conf
