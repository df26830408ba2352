"""Shared fixtures: every test gets its own queue prefix on the real broker and its own database."""
from __future__ import annotations

import logging
import os
import uuid
from typing import Iterator

import pytest
import requests

from backend.app import Backend
from backend.settings import Settings
from backend.store import Store

API_URL = os.environ.get("RABBITMQ_API_URL", "http://127.0.0.1:15672").rstrip("/")
API_AUTH = (os.environ.get("RABBITMQ_API_USER", "guest"), os.environ.get("RABBITMQ_API_PASSWORD", "guest"))


def delete_prefixed(prefix: str, api_url: str = API_URL, auth: tuple[str, str] = API_AUTH) -> None:
    """Remove every queue and exchange a test created (names start with its prefix)."""
    for kind in ("queues", "exchanges"):
        resp = requests.get(f"{api_url}/api/{kind}", auth=auth, timeout=10, params={"columns": "name,vhost"})
        resp.raise_for_status()
        for item in resp.json():
            if item["name"].startswith(prefix + "."):
                vhost = requests.utils.quote(item["vhost"], safe="")
                name = requests.utils.quote(item["name"], safe="")
                requests.delete(f"{api_url}/api/{kind}/{vhost}/{name}", auth=auth, timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _broker_reachable() -> None:
    """The real broker is required: a missing broker is a failure, never a skip."""
    try:
        requests.get(f"{API_URL}/api/overview", auth=API_AUTH, timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"RabbitMQ management API not reachable at {API_URL} ({exc}); run `make broker`", pytrace=False)


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(prefix: str) -> Iterator[Settings]:
    base = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith(("AMQP_", "RABBITMQ_"))})
    s = base.with_(
        prefix=prefix,
        mongodb_url=f"mongomock://{prefix}",
        mongodb_db=f"db_{prefix}",
        poll_interval=0.1,
        confirm_timeout=5.0,
        transient_backoff=0.05,
        gap_grace=2.0,
        relay_min_age=0.0,
        claim_lease=3.0,
    )
    yield s
    Store.open(s).drop()
    delete_prefixed(prefix)


@pytest.fixture
def backend(settings: Settings) -> Iterator[Backend]:
    be = Backend(settings)
    yield be
    be.close()


@pytest.fixture(autouse=True)
def _quiet_pika() -> None:
    logging.getLogger("pika").setLevel(logging.WARNING)
