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


# The ledger backends a test module runs on when it sets LEDGER_FLAVORS = ALL_FLAVORS: the
# embedded store, mongomock behind the MongoDB code path (its own unique indexes and pymongo's
# error classes, no embedded shortcuts), and a real MongoDB when MONGODB_TEST_URL is set (e.g.
# the compose replica set: MONGODB_TEST_URL="mongodb://127.0.0.1:27017/?replicaSet=rs0").
MONGODB_TEST_URL = os.environ.get("MONGODB_TEST_URL", "").strip()
ALL_FLAVORS = ("embedded", "mongodb-path") + (("mongodb",) if MONGODB_TEST_URL else ())


def ledger_url(flavor: str, prefix: str) -> str:
    return {"embedded": f"mongomock://{prefix}", "mongodb-path": f"mongomock+mongodb://{prefix}",
            "mongodb": MONGODB_TEST_URL}[flavor]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    flavors = getattr(metafunc.module, "LEDGER_FLAVORS", None)
    if flavors and "ledger_flavor" in metafunc.fixturenames:
        metafunc.parametrize("ledger_flavor", flavors)


@pytest.fixture
def ledger_flavor() -> str:
    return "embedded"


@pytest.fixture
def settings(prefix: str, ledger_flavor: str) -> Iterator[Settings]:
    base = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith(("AMQP_", "RABBITMQ_"))})
    s = base.with_(
        prefix=prefix,
        mongodb_url=ledger_url(ledger_flavor, prefix),
        mongodb_db=f"db_{prefix}",
        poll_interval=0.1,
        idle_poll=0.5,
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
