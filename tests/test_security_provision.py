"""Least-privilege broker access, provisioned through the management API on the real broker.

Each test provisions its own temporary virtual host (and users named after its prefix) and
deletes them afterwards.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from admin import cli
from admin.provision import ActorPlan, amqp_url_for, provision
from admin.rabbitmq_api import RabbitAdminAPI, RabbitAPI
from backend.app import Backend, open_ledger
from backend.broker import ActorConsumer, BrokerRefused, Publisher, connect
from backend.errors import BrokerUnavailable
from backend.settings import Settings
from backend.values import Envelope, QueueType
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import API_AUTH, API_URL
from tests.helpers import Recorder

PASSWORDS = {
    "PROVISION_BACKEND_PASSWORD": "backend-" + uuid.uuid4().hex,
    "PROVISION_CONSOLE_PASSWORD": "console-" + uuid.uuid4().hex,
    "PROVISION_CONNECTOR_PAYMENT_PASSWORD": "payment-" + uuid.uuid4().hex,
    "PROVISION_CONNECTOR_SHIPPING_PASSWORD": "shipping-" + uuid.uuid4().hex,
}


def admin_api() -> RabbitAdminAPI:
    return RabbitAdminAPI(API_URL, *API_AUTH)


def _cleanup(vhost: str, prefix: str) -> None:
    api = admin_api()
    api.delete_vhost(vhost)
    for user in requests.get(f"{API_URL}/api/users", auth=API_AUTH, timeout=10).json():
        if user["name"].startswith(prefix + "-"):
            api.delete_user(user["name"])


@dataclass
class Provisioned:
    vhost: str
    settings: Settings  # the test's settings (prefix, database), pointing at the vhost

    def as_user(self, component: str, password_env: str, **changes: object) -> Settings:
        user = f"{self.settings.prefix}-{component}"
        url = amqp_url_for(self.settings, user, PASSWORDS[password_env], self.vhost)
        return self.settings.with_(amqp_urls=(url,), declare=False, **changes)

    def backend_settings(self) -> Settings:
        return self.as_user("backend", "PROVISION_BACKEND_PASSWORD")

    def connector_settings(self, actor: str) -> Settings:
        return self.as_user(f"connector-{actor}", f"PROVISION_CONNECTOR_{actor.upper()}_PASSWORD")


@pytest.fixture
def vhost(settings: Settings) -> Iterator[str]:
    name = f"{settings.prefix}-vhost"
    yield name
    _cleanup(name, settings.prefix)


@pytest.fixture
def provisioned(settings: Settings, vhost: str) -> Provisioned:
    actors = [ActorPlan("payment", 1, settings.queue_type), ActorPlan("shipping", 2, settings.queue_type)]
    provision(admin_api(), settings, actors, vhost=vhost, env=PASSWORDS)
    return Provisioned(vhost, settings)


def _permissions(vhost: str) -> dict[str, tuple[str, str, str]]:
    return {p["user"]: (p["configure"], p["write"], p["read"]) for p in admin_api().permissions(vhost)}


def test_security_provision_creates_least_privilege_users_and_is_idempotent(provisioned: Provisioned) -> None:
    p = provisioned.settings.prefix
    first = _permissions(provisioned.vhost)
    assert first == {
        f"{p}-backend": ("^$", rf"^{p}\.messages$", "^$"),
        f"{p}-console": ("^$", "^$", "^$"),  # the management API only: no AMQP right
        f"{p}-connector-payment": ("^$", "^$", rf"^{p}\.actor\.payment(\.lane[0-9]+)?$"),
        f"{p}-connector-shipping": ("^$", "^$", rf"^{p}\.actor\.shipping(\.lane[0-9]+)?$"),
    }
    assert "guest" not in first  # nor the provisioning admin: nobody else has rights here
    assert admin_api().user(f"{p}-console")["tags"] == ["monitoring"]
    # Run again without passwords: nothing changes, no password is replaced or shown.
    result = provision(admin_api(), provisioned.settings,
                       [ActorPlan("payment", 1, QueueType.QUORUM), ActorPlan("shipping", 2, QueueType.QUORUM)],
                       vhost=provisioned.vhost, env={})
    assert result.passwords == {}
    assert _permissions(provisioned.vhost) == first
    with ActorConsumerOpen(provisioned.connector_settings("payment"), "payment"):
        pass  # the kept password still works


def test_security_provision_rotates_one_password(provisioned: Provisioned) -> None:
    user = f"{provisioned.settings.prefix}-connector-payment"
    result = provision(admin_api(), provisioned.settings, [ActorPlan("payment", 1, QueueType.QUORUM)],
                       vhost=provisioned.vhost, env={}, rotate=[user])
    assert set(result.passwords) == {user}
    with pytest.raises(BrokerUnavailable), ActorConsumerOpen(provisioned.connector_settings("payment"), "payment"):
        pass  # the old password is refused
    fresh = provisioned.settings.with_(
        amqp_urls=(amqp_url_for(provisioned.settings, user, result.passwords[user], provisioned.vhost),), declare=False)
    with ActorConsumerOpen(fresh, "payment"):
        pass


class ActorConsumerOpen:
    """Open (and close) a consumer on an actor queue; raises what open() raises."""

    def __init__(self, settings: Settings, actor: str, lane: int = 0) -> None:
        self.consumer = ActorConsumer(settings, actor, settings.queue_type, lane=lane, prefetch=1)

    def __enter__(self) -> ActorConsumer:
        self.consumer.open()
        return self.consumer

    def __exit__(self, *exc: object) -> None:
        self.consumer.release()


def test_security_connector_cannot_consume_another_actors_queue(provisioned: Provisioned) -> None:
    payment = provisioned.connector_settings("payment")
    with ActorConsumerOpen(payment, "payment") as own:
        assert own.is_open
    with pytest.raises(BrokerRefused, match="403"), ActorConsumerOpen(payment, "shipping"):
        pass
    with pytest.raises(BrokerRefused, match="403"), ActorConsumerOpen(payment, "shipping", lane=1):
        pass
    # Its own lanes are its own: shipping's connector may read shipping.lane1.
    with ActorConsumerOpen(provisioned.connector_settings("shipping"), "shipping", lane=1) as lane:
        assert lane.is_open


def test_security_backend_cannot_consume_or_declare(provisioned: Provisioned) -> None:
    backend = provisioned.backend_settings()
    for actor in ("payment", "shipping"):
        with pytest.raises(BrokerRefused, match="403 ACCESS_REFUSED"), ActorConsumerOpen(backend, actor):
            pass
    # Declaring (not just checking) queues is refused too: the topology is provisioned.
    pub = Publisher(backend.with_(declare=True))
    try:
        with pytest.raises(BrokerRefused, match="403"):
            pub.declare_actor("newcomer", QueueType.QUORUM)
    finally:
        pub.close()


def test_security_unprovisioned_queue_is_a_clear_refusal(provisioned: Provisioned) -> None:
    pub = Publisher(provisioned.backend_settings())
    try:
        with pytest.raises(BrokerRefused, match="404"):
            pub.declare_actor("unknown-actor", QueueType.QUORUM)
    finally:
        pub.close()


def test_security_pipeline_end_to_end_with_least_privilege_users(provisioned: Provisioned) -> None:
    """Given the provisioned users, when the backend user emits and each connector user consumes
    its own actor, then every message is handled, in order."""
    be = Backend(provisioned.backend_settings())
    try:
        be.subscriptions.actor("payment")
        be.subscriptions.subscribe("payment", "order.paid")
        be.subscriptions.subscribe("shipping", "order.paid")
        be.declare()
        for i in range(5):
            be.emit_event("order.paid", {"n": i})
        be.emitter.flush()
        stored = [m for actor in ("payment", "shipping") for m in be.ledger.find(actor=actor, limit=100)[0]]
        assert len(stored) == 10
        assert all(m["status"] != "pending" for m in stored), "the broker confirmed every publish"
    finally:
        be.close()
    for actor in ("payment", "shipping"):
        recorder = Recorder()
        reg = Registry()
        reg.register(actor, recorder)
        settings = provisioned.connector_settings(actor)
        Runtime(settings, open_ledger(settings), reg, actors=[actor]).run(drain=True, timeout=60)
        assert recorder.payloads() == [{"n": i} for i in range(5)], actor


def test_security_console_monitoring_user_reads_the_vhost_and_nothing_more(provisioned: Provisioned) -> None:
    s = provisioned.settings
    user, password = f"{s.prefix}-console", PASSWORDS["PROVISION_CONSOLE_PASSWORD"]
    console = RabbitAPI(API_URL, user, password, vhost=provisioned.vhost)
    names = {q.name for q in console.queues(s.prefix + ".actor.")}
    assert names == {f"{s.prefix}.actor.payment", f"{s.prefix}.actor.shipping", f"{s.prefix}.actor.shipping.lane1"}
    assert console.queue(f"{s.prefix}.actor.payment") is not None
    assert console.health()["nodes_running"]
    vh = requests.utils.quote(provisioned.vhost, safe="")
    q = requests.utils.quote(f"{s.prefix}.actor.payment", safe="")
    auth = (user, password)
    # Reading messages, publishing anywhere but <prefix>.messages, deleting or creating: all refused.
    attempts = [
        requests.post(f"{API_URL}/api/queues/{vh}/{q}/get", auth=auth, timeout=10,
                      json={"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        requests.post(f"{API_URL}/api/exchanges/{vh}/{s.dead_letter_exchange}/publish", auth=auth, timeout=10,
                      json={"properties": {}, "routing_key": "", "payload": "x", "payload_encoding": "string"}),
        requests.post(f"{API_URL}/api/exchanges/{vh}/amq.default/publish", auth=auth, timeout=10,
                      json={"properties": {}, "routing_key": f"{s.prefix}.actor.payment", "payload": "x",
                            "payload_encoding": "string"}),
        requests.delete(f"{API_URL}/api/queues/{vh}/{q}", auth=auth, timeout=10),
        requests.put(f"{API_URL}/api/queues/{vh}/{s.prefix}.evil", auth=auth, timeout=10, json={"durable": True}),
        requests.put(f"{API_URL}/api/users/{s.prefix}-evil", auth=auth, timeout=10, json={"password": "x", "tags": "administrator"}),
        requests.put(f"{API_URL}/api/permissions/{vh}/{user}", auth=auth, timeout=10,
                     json={"configure": ".*", "write": ".*", "read": ".*"}),
    ]
    # 401, or for a publish a 400 that carries the broker's own 403 ACCESS_REFUSED.
    refused = [r.status_code == 401 or (r.status_code == 400 and "403 ACCESS_REFUSED" in r.text) for r in attempts]
    assert all(refused), [(r.status_code, r.text[:200]) for r in attempts]
    assert admin_api().user(f"{s.prefix}-evil") is None


def test_security_console_user_can_neither_publish_nor_consume(provisioned: Provisioned) -> None:
    """An operator's replay or cancel is a write of intent in the ledger, carried out by the lane's
    connector: the console's broker user needs (and has) no AMQP right at all."""
    console = provisioned.as_user("console", "PROVISION_CONSOLE_PASSWORD")
    pub = Publisher(console)
    try:
        env = Envelope("shipping.1.1", "shipping", 1, "x", 1)
        try:
            confirmed = pub.publish([env], {"shipping": console.queue_type})
        except BrokerRefused:
            confirmed = set()
        assert confirmed == set(), "the broker took a publish from the console's user"
    finally:
        pub.close()
    with pytest.raises(BrokerRefused, match="403 ACCESS_REFUSED"), ActorConsumerOpen(console, "shipping", lane=1):
        pass


@pytest.fixture
def fake_guest(settings: Settings, vhost: str) -> Iterator[str]:
    """A stand-in for guest (the shared broker's real guest runs the other tests): an
    administrator with every right on / and on the test vhost, as guest has on a fresh broker."""
    name = f"{settings.prefix}-guest"
    api = admin_api()
    api.put_vhost(vhost)
    api.put_user(name, "administrator", password="guest-" + uuid.uuid4().hex)
    api.put_permissions("/", name, ".*", ".*", ".*")
    api.put_permissions(vhost, name, ".*", ".*", ".*")
    yield name
    api.delete_user(name)  # the vhost and the other users go with the `vhost` fixture


def test_security_guest_restrict_leaves_guest_able_to_do_nothing(settings: Settings, vhost: str,
                                                                   fake_guest: str) -> None:
    """Given a guest that is an administrator with rights on two vhosts, when provisioning runs
    with --guest restrict, then guest has no tag and no permission anywhere, keeps its password
    hash (it is not re-created with another one), and can neither use the management API nor
    open an AMQP connection."""
    api = admin_api()
    password = "guest-" + uuid.uuid4().hex
    api.put_user(fake_guest, "administrator", password=password)
    before = api.user(fake_guest)
    provision(api, settings, [ActorPlan("payment", 1, settings.queue_type)], vhost=vhost, env=PASSWORDS,
              guest="restrict", guest_user=fake_guest)
    after = api.user(fake_guest)
    assert after is not None and after["tags"] in ([], "")
    assert after["password_hash"] == before["password_hash"]
    assert api.user_permissions(fake_guest) == []
    assert requests.get(f"{API_URL}/api/overview", auth=(fake_guest, password), timeout=10).status_code == 401
    for vh in ("/", vhost):
        as_guest = settings.with_(amqp_urls=(amqp_url_for(settings, fake_guest, password, vh),), declare=False)
        with pytest.raises(BrokerUnavailable, match=r"access to vhost .* refused"):
            connect(as_guest, "fake-guest").close()
    # Idempotent: a second run finds nothing left to take away.
    provision(api, settings, [ActorPlan("payment", 1, settings.queue_type)], vhost=vhost, env=PASSWORDS,
              guest="restrict", guest_user=fake_guest)
    assert api.user_permissions(fake_guest) == [] and api.user(fake_guest)["tags"] in ([], "")


def test_security_guest_restrict_never_demotes_the_provisioning_administrator(settings: Settings,
                                                                                vhost: str) -> None:
    """When guest itself runs the provisioning (a development broker), restrict takes away its
    rights on the provisioned vhost only: demoting it would lock the run out."""
    api = admin_api()
    me = str(api.whoami()["name"])
    provision(api, settings, [ActorPlan("payment", 1, settings.queue_type)], vhost=vhost, env=PASSWORDS,
              guest="restrict", guest_user=me)
    assert me not in _permissions(vhost)
    assert "administrator" in str(api.user(me)["tags"])
    assert any(p["vhost"] == "/" for p in api.user_permissions(me))
    # guest is also never created where it does not exist
    provision(api, settings, [ActorPlan("payment", 1, settings.queue_type)], vhost=vhost, env=PASSWORDS,
              guest="restrict", guest_user=f"{settings.prefix}-absent")
    assert api.user(f"{settings.prefix}-absent") is None


def test_security_management_tag_is_not_enough_for_the_console(provisioned: Provisioned) -> None:
    """Why `monitoring`: with `management` the console could list queues but not the nodes."""
    s = provisioned.settings
    user = f"{s.prefix}-console"
    api = admin_api()
    api.put_user(user, "management", password=PASSWORDS["PROVISION_CONSOLE_PASSWORD"])
    console = RabbitAPI(API_URL, user, PASSWORDS["PROVISION_CONSOLE_PASSWORD"], vhost=provisioned.vhost)
    assert console.queues(s.prefix + ".actor.")
    from admin.rabbitmq_api import BrokerAPIUnavailable

    with pytest.raises(BrokerAPIUnavailable, match="401"):
        console.health()


def test_security_provisioned_queues_match_what_clients_declare(settings: Settings, vhost: str) -> None:
    """A client with declare rights (FIFOQ_DECLARE=1) redeclares a provisioned queue without a
    406: the management API and backend.broker agree on the arguments."""
    provision(admin_api(), settings, [ActorPlan("payment", 1, settings.queue_type)], vhost=vhost, env=PASSWORDS,
              guest="keep")
    url = amqp_url_for(settings, API_AUTH[0], API_AUTH[1], vhost)
    pub = Publisher(settings.with_(amqp_urls=(url,), declare=True))
    try:
        assert pub.declare_actor("payment", settings.queue_type) == settings.queue_name("payment")
    finally:
        pub.close()


def test_security_cli_provision_prints_passwords_once_and_never_logs_them(settings: Settings, vhost: str, monkeypatch,
                                                                          capsys, caplog) -> None:
    for key in ("RABBITMQ_API_URL", "FIFOQ_PREFIX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FIFOQ_PREFIX", settings.prefix)
    monkeypatch.setenv("RABBITMQ_API_URL", API_URL)
    monkeypatch.setenv("FIFOQ_VHOST", vhost)
    caplog.set_level(logging.DEBUG)
    assert cli.main(["provision", "payment"]) == 0
    out = capsys.readouterr().out
    first = [line for line in out.splitlines() if line.startswith(("AMQP_URL=", "RABBITMQ_API_PASSWORD="))]
    assert len(first) == 4, out  # backend, console (API and AMQP), connector
    secrets_shown = [line.split(":", 2)[2].split("@")[0] if line.startswith("AMQP_URL") else line.split("=", 1)[1]
                     for line in first]
    assert all(len(s) >= 24 for s in secrets_shown)
    assert len(set(secrets_shown)) == 3  # one password per user
    assert cli.main(["provision", "payment"]) == 0
    again = capsys.readouterr().out
    assert "AMQP_URL=" not in again and "password unchanged" in again
    for secret in secrets_shown:
        assert secret not in caplog.text
        assert secret not in again


def test_security_cli_provision_does_not_print_passwords_taken_from_the_environment(
        settings: Settings, vhost: str, monkeypatch, capsys) -> None:
    """Under docker compose the passwords come from PROVISION_*_PASSWORD and stdout is the
    container's log: the report names the variable instead of echoing the secret."""
    monkeypatch.setenv("FIFOQ_PREFIX", settings.prefix)
    monkeypatch.setenv("RABBITMQ_API_URL", API_URL)
    monkeypatch.setenv("FIFOQ_VHOST", vhost)
    for key, value in PASSWORDS.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["provision", "payment:1"]) == 0
    out = capsys.readouterr().out
    assert "AMQP_URL=" not in out and "RABBITMQ_API_PASSWORD=" not in out
    assert "password set from PROVISION_BACKEND_PASSWORD" in out
    for secret in PASSWORDS.values():
        assert secret not in out


def test_security_cli_provision_refuses_bad_actor_names(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RABBITMQ_API_URL", API_URL)
    assert cli.main(["provision", "../etc"]) == 2
    assert cli.main(["provision", "pay:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2
