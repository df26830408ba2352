"""The management API client against the real broker; unreachable means an error, never 'no queues'."""
from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
import requests

from admin.rabbitmq_api import BrokerAPIUnavailable, QueueInfo, RabbitAPI, vhost_of
from backend.app import Backend
from backend.settings import Settings
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.conftest import API_AUTH, API_URL
from tests.helpers import CLOSED_PORT_URL, Recorder, wait_for


def api_for(settings: Settings) -> RabbitAPI:
    return RabbitAPI.from_settings(settings)


def test_admin_rabbitmq_api_health_reports_nodes_and_alarms(settings: Settings) -> None:
    health = api_for(settings).health()
    assert health["nodes_running"] and health["nodes_down"] == []
    assert health["alarms"] == [] and health["ok"] is True
    assert health["version"].startswith(("3.", "4."))


def test_admin_rabbitmq_api_lists_only_the_prefix_queues_with_depths(backend: Backend) -> None:
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.subscriptions.subscribe("shipping", "tour.booked")
    backend.declare()
    for i in range(4):
        backend.emit_event("tour.booked", {"n": i})
    api = api_for(backend.settings)
    prefix = backend.settings.prefix
    names = sorted(q.name for q in api.queues(f"{prefix}.actor."))
    assert names == [f"{prefix}.actor.payment", f"{prefix}.actor.shipping"]
    assert api.queues("no-such-prefix-zz.") == []

    def depth_reported() -> bool:
        q = api.queue(backend.settings.queue_name("payment"))
        return q is not None and q.messages_ready == 4

    wait_for(depth_reported, timeout=30, interval=0.5, what="the broker's stats to show 4 ready messages")
    q = api.queue(backend.settings.queue_name("payment"))
    assert q.messages_unacknowledged == 0 and q.total == 4 and q.type == "quorum"
    assert api.queue(f"{prefix}.actor.nobody") is None


def test_admin_rabbitmq_api_listing_over_several_pages_has_every_queue_once(backend: Backend, monkeypatch) -> None:
    """Pages after the first are asked beside it, as many as the last listing had: the listing is
    whole when the actors grow, shrink or stay (3 queues a page here)."""
    monkeypatch.setattr("admin.rabbitmq_api.PAGE_SIZE", 3)
    api = api_for(backend.settings)
    prefix = f"{backend.settings.prefix}.actor."

    def declare(n: int) -> list[str]:
        for i in range(n):
            backend.subscriptions.subscribe(f"a{i:02d}", "tour.booked")
        backend.declare()
        return sorted(f"{prefix}a{i:02d}" for i in range(n))

    expected = declare(7)
    assert sorted(q.name for q in api.queues(prefix)) == expected  # 3 pages, the 2nd and 3rd after the 1st
    assert sorted(q.name for q in api.queues(prefix)) == expected  # all 3 at once
    expected = declare(11)
    assert sorted(q.name for q in api.queues(prefix)) == expected  # 4 pages: 3 at once, then the 4th
    for name in expected[4:]:
        requests.delete(f"{API_URL}/api/queues/{quote(api.vhost, safe='')}/{quote(name, safe='')}", auth=API_AUTH, timeout=10).raise_for_status()
    assert sorted(q.name for q in api.queues(prefix)) == expected[:4]  # 2 pages; the 3rd and 4th asked, empty


def test_admin_rabbitmq_api_sees_the_single_active_consumer(backend: Backend) -> None:
    """While a connector holds the payment queue, the API reports its single active consumer tag
    (single_active_consumer_ctag on 3.10-3.11, _tag from 3.12)."""
    backend.subscriptions.subscribe("payment", "tour.booked")
    backend.declare()
    reg = Registry()
    reg.register("payment", Recorder())
    runtime = Runtime(backend.settings, backend.ledger, reg).start()
    api = api_for(backend.settings)
    try:
        wait_for(lambda: (api.queue(backend.settings.queue_name("payment")) or _none).consumer_connected,
                 timeout=30, interval=0.3, what="the consumer to register")
        q = api.queue(backend.settings.queue_name("payment"))
        assert q.active_consumer_tag and q.consumers >= 1
    finally:
        runtime.stop()


class _NoQueue:
    consumer_connected = False


_none = _NoQueue()


@pytest.mark.parametrize("key", ["single_active_consumer_ctag", "single_active_consumer_tag"])
def test_admin_rabbitmq_api_reads_both_sac_field_names(key: str) -> None:
    q = QueueInfo.from_api({"name": "p.actor.a", key: "amq.ctag-1", "consumers": 2, "messages_ready": 1,
                            "messages_unacknowledged": 1, "message_stats": {"ack_details": {"rate": 2.5}}})
    assert q.active_consumer_tag == "amq.ctag-1" and q.consumer_connected and q.ack_rate == 2.5 and q.total == 2


def test_admin_rabbitmq_api_missing_stats_are_unknown_not_zero() -> None:
    q = QueueInfo.from_api({"name": "p.actor.a"})
    assert q.messages_ready is None and q.total is None and q.ack_rate is None and q.consumer_connected is None


def test_admin_rabbitmq_api_unreachable_raises_and_never_logs_the_password(caplog) -> None:
    api = RabbitAPI(CLOSED_PORT_URL.replace("http://", "http://guest:topsecret@"), "guest", "topsecret", timeout=2)
    caplog.set_level(logging.DEBUG, logger="admin")
    for call in (api.health, lambda: api.queues("x."), lambda: api.queue("x")):
        with pytest.raises(BrokerAPIUnavailable) as info:
            call()
        assert "unreachable" in str(info.value) and "topsecret" not in str(info.value)
    assert "topsecret" not in caplog.text


def test_admin_rabbitmq_api_wrong_credentials_raise(settings: Settings) -> None:
    api = RabbitAPI(settings.api_url, "guest", "wrong-password", timeout=5)
    with pytest.raises(BrokerAPIUnavailable, match="refused the credentials"):
        api.queues("x.")


def test_admin_rabbitmq_api_unknown_vhost_is_an_error_not_an_empty_list(settings: Settings) -> None:
    api = RabbitAPI(settings.api_url, settings.api_user, settings.api_password, vhost="no-such-vhost-zz", timeout=5)
    with pytest.raises(BrokerAPIUnavailable, match="does not exist"):
        api.queues("x.")


def test_admin_rabbitmq_api_vhost_comes_from_the_amqp_url() -> None:
    assert vhost_of(Settings(amqp_urls=("amqp://u:p@h:5672/%2F",))) == "/"
    assert vhost_of(Settings(amqp_urls=("amqp://u:p@h:5672/prod",))) == "prod"
    assert vhost_of(Settings(amqp_urls=("amqp://u:p@h:5672",))) == "/"


def test_admin_rabbitmq_api_is_the_only_caller_of_the_management_api() -> None:
    """Only admin/rabbitmq_api.py imports requests in admin/ (flower's lesson: one module), besides
    admin/webhook.py, which posts the notifier's webhooks and never names the management API."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "admin"
    users = sorted(p.name for p in root.rglob("*.py") if "import requests" in p.read_text())
    assert users == ["rabbitmq_api.py", "webhook.py"]
    webhook = (root / "webhook.py").read_text()
    assert "rabbitmq" not in webhook.lower() and "/api/" not in webhook
