"""The webhook notifier (admin.notifier): signed JSON POSTs to a local HTTP receiver when actors and
ordering keys block and unblock through the real pipeline, retried after a failure, delivered once
per deployment (a lease), and neither lost nor repeated across a restart."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from admin import cli, webhook
from admin.notifier import BLOCKS, Notifier, retry_delay
from admin.notify_settings import NotifySettings
from backend.app import Backend
from backend.errors import ConfigError
from backend.ledger import utcnow
from backend.settings import EnvSettings
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.helpers import Blocked, Recorder

SECRET = "s3cret-for-the-default-receiver"
PAYMENT_SECRET = "another-secret-for-payment-only"


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers `failures` 500s first."""

    def __init__(self, failures: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures = failures
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    fail = receiver.failures > 0
                    receiver.failures -= 1 if fail else 0
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "answered": 500 if fail else 204})
                self.send_response(500 if fail else 204)
                self.end_headers()
                if fail:
                    self.wfile.write(b"receiver down")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/fifoq"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r, json=json.loads(r["body"])) for r in self.requests if r["answered"] == 204]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Clock:
    """The notifier's clock, moved by the test: retries are due when the test says so."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def settings_for(url: str, **env: str) -> NotifySettings:
    return NotifySettings.from_env({"ADMIN_NOTIFY_URL": url, "ADMIN_NOTIFY_SECRET": SECRET,
                                    "ADMIN_PUBLIC_URL": "https://console.example.com/", **env})


def test_notifier_webhook_is_signed_delivered_and_retried_after_a_500(backend: Backend, blocked: Blocked,
                                                                        receiver: Receiver) -> None:
    receiver.failures = 1
    clock = Clock()
    notifier = Notifier(backend.ledger, backend.store, settings_for(receiver.url), clock=clock)
    assert notifier.tick() == 0  # noted, sent, refused with a 500: owed
    assert [r["answered"] for r in receiver.requests] == [500]
    with backend.store.op() as db:
        state = db[BLOCKS].find_one({"actor": "payment"})
    assert state["blocked"]["status"] == "pending" and state["blocked"]["attempts"] == 1
    assert state["blocked"]["last_error"] == "HTTP 500: receiver down"
    assert notifier.tick() == 0  # not due yet: the backoff is not over
    clock.advance(retry_delay(notifier.settings, 1))
    assert notifier.tick() == 1
    first, second = receiver.requests
    assert second["answered"] == 204 and json.loads(first["body"])["attempt"] == 1
    for r in (first, second):
        assert r["headers"]["X-Fifoq-Event"] == "blocked"
        assert webhook.verify_signature(SECRET, r["headers"]["X-Fifoq-Signature"], r["body"])
        assert not webhook.verify_signature("not-the-secret-at-all", r["headers"]["X-Fifoq-Signature"], r["body"])
        assert not webhook.verify_signature(SECRET, r["headers"]["X-Fifoq-Signature"], r["body"] + b" ")
    assert first["headers"]["X-Fifoq-Delivery"] == second["headers"]["X-Fifoq-Delivery"]  # one notification
    body = json.loads(second["body"])
    assert body["id"] == second["headers"]["X-Fifoq-Delivery"] and body["attempt"] == 2
    assert (body["event"], body["actor"], body["key"], body["message_id"], body["seq"]) == \
        ("blocked", "payment", None, blocked.failed_id, 2)
    assert body["error"]["type"] == "ValueError" and body["since"].endswith("Z")
    assert body["message_url"] == f"https://console.example.com/messages/{blocked.failed_id}"
    # nothing more to say while the block lasts
    clock.advance(600)
    assert notifier.tick() == 0 and len(receiver.requests) == 2
    # the operator cancels the message: the actor unblocks
    backend.operations.cancel(blocked.failed_id, "otto", "duplicate booking")
    assert notifier.tick() == 1
    unblocked = receiver.accepted()[-1]
    assert unblocked["headers"]["X-Fifoq-Event"] == "unblocked"
    assert webhook.verify_signature(SECRET, unblocked["headers"]["X-Fifoq-Signature"], unblocked["body"])
    assert unblocked["json"]["outcome"] == "cancelled" and unblocked["json"]["blocked_seconds"] >= 0
    assert unblocked["json"]["since"] == body["since"] and unblocked["json"]["id"].endswith(".unblocked")


def test_notifier_restart_neither_loses_nor_repeats_a_notification(backend: Backend, blocked: Blocked,
                                                                   receiver: Receiver) -> None:
    receiver.failures = 3
    clock = Clock()
    first = Notifier(backend.ledger, backend.store, settings_for(receiver.url), clock=clock)
    first.tick()
    assert len(receiver.requests) == 1 and not receiver.accepted()
    first.release()  # the process stops (SIGTERM) with the notification still owed
    # a new process: it does not announce the block again, it retries what is owed
    second = Notifier(backend.ledger, backend.store, settings_for(receiver.url), clock=clock)
    clock.advance(3600)
    while not receiver.accepted():
        second.tick()
        clock.advance(3600)
    assert len(receiver.accepted()) == 1
    third = Notifier(backend.ledger, backend.store, settings_for(receiver.url), clock=clock)
    clock.advance(3600)
    third.tick()  # the second's lease has expired: the third works
    assert third.leader and len(receiver.accepted()) == 1  # known and delivered: nothing again
    ids = {r["headers"]["X-Fifoq-Delivery"] for r in receiver.requests}
    assert len(ids) == 1


def test_notifier_lease_lets_one_notifier_send_per_deployment(backend: Backend, blocked: Blocked,
                                                              receiver: Receiver) -> None:
    clock = Clock()
    a = Notifier(backend.ledger, backend.store, settings_for(receiver.url), clock=clock)
    b = Notifier(backend.ledger, backend.store, settings_for(receiver.url), clock=clock)
    assert a.tick() == 1 and a.leader
    backend.operations.cancel(blocked.failed_id, "otto", "duplicate")
    assert b.tick() == 0 and not b.leader  # a standby: a holds a live lease
    assert len(receiver.requests) == 1
    clock.advance(60)  # a stopped renewing (killed): its lease expires, b takes over
    assert b.tick() == 1 and b.leader
    assert [r["headers"]["X-Fifoq-Event"] for r in receiver.requests] == ["blocked", "unblocked"]
    assert a.tick() == 0 and not a.leader


def test_notifier_routes_each_actor_and_each_ordering_key_block(backend: Backend, receiver: Receiver) -> None:
    """dossiers (ordering keys) goes to its own receiver with its own secret; its key A blocks,
    then is released by a cancel; orders is switched off."""
    own = Receiver()
    try:
        backend.subscriptions.actor("dossiers", lanes=2)
        backend.subscriptions.subscribe("dossiers", "dossier.#", ordering_key="dossier_id")
        backend.subscriptions.subscribe("orders", "dossier.#")
        backend.declare()
        for i in range(3):
            for key in "AB":
                backend.emit_event("dossier.step", {"dossier_id": key, "i": i, "bad": key == "A" and i == 1})
        reg = Registry()
        reg.register("dossiers", Recorder(fail_when=lambda m: m.payload["bad"]))
        reg.register("orders", Recorder(fail_when=lambda m: m.payload["bad"]))
        Runtime(backend.settings, backend.ledger, reg).run(drain=True, timeout=120)
        assert {(b["actor"], b["key"]) for b in backend.ledger.blocks()} == {("dossiers", "A"), ("orders", None)}
        settings = settings_for(receiver.url, ADMIN_NOTIFY_URL_DOSSIERS=own.url,
                                ADMIN_NOTIFY_SECRET_DOSSIERS=PAYMENT_SECRET, ADMIN_NOTIFY_URL_ORDERS="off")
        notifier = Notifier(backend.ledger, backend.store, settings, clock=Clock())
        assert notifier.tick() == 1
        assert receiver.requests == []
        [sent] = own.accepted()
        assert webhook.verify_signature(PAYMENT_SECRET, sent["headers"]["X-Fifoq-Signature"], sent["body"])
        assert not webhook.verify_signature(SECRET, sent["headers"]["X-Fifoq-Signature"], sent["body"])
        assert (sent["json"]["actor"], sent["json"]["key"], sent["json"]["event"]) == ("dossiers", "A", "blocked")
        failed = backend.ledger.blocked_keys("dossiers")[0]["blocked"]["message_id"]
        backend.operations.cancel(failed, "otto", "bad step")
        Runtime(backend.settings, backend.ledger, reg).run(drain=True, timeout=120)  # releases the held messages
        notifier.tick()
        assert [r["json"]["event"] for r in own.accepted()] == ["blocked", "unblocked"]
        assert own.accepted()[-1]["json"]["key"] == "A"
    finally:
        own.close()


def test_notifier_gives_up_after_the_configured_time_and_moves_on(backend: Backend, blocked: Blocked,
                                                                  receiver: Receiver) -> None:
    receiver.failures = 10_000
    clock = Clock()
    notifier = Notifier(backend.ledger, backend.store, settings_for(receiver.url, ADMIN_NOTIFY_GIVE_UP_HOURS="1"),
                        clock=clock)
    for _ in range(20):
        notifier.tick()
        clock.advance(600)
    with backend.store.op() as db:
        state = db[BLOCKS].find_one({"actor": "payment"})
    assert state["blocked"]["status"] == "dropped" and state["due_at"] is None
    tried = len(receiver.requests)
    assert 2 <= tried <= 12  # backoff: not every round
    notifier.tick()
    assert len(receiver.requests) == tried


GOOD = {"ADMIN_NOTIFY_URL": "https://h.example.com", "ADMIN_NOTIFY_SECRET": SECRET}


@pytest.mark.parametrize("env,message", [
    # the default receiver and its secret
    ({"ADMIN_NOTIFY_URL": "ftp://hooks.example.com", "ADMIN_NOTIFY_SECRET": SECRET},
     "ADMIN_NOTIFY_URL: 'ftp://hooks.example.com' must be an http:// or https:// URL with a host"),
    ({"ADMIN_NOTIFY_URL": "https:///no-host", "ADMIN_NOTIFY_SECRET": SECRET}, "ADMIN_NOTIFY_URL: 'https:///no-host' must be"),
    ({"ADMIN_NOTIFY_URL": "https://h.example.com:99999/", "ADMIN_NOTIFY_SECRET": SECRET}, "ADMIN_NOTIFY_URL: "),
    ({"ADMIN_NOTIFY_URL": "ftp://u:pw-s3cret@hooks.example.com", "ADMIN_NOTIFY_SECRET": SECRET}, "ADMIN_NOTIFY_URL: 'ftp://u:***@hooks"),
    ({"ADMIN_NOTIFY_URL": "https://hooks.example.com"}, "ADMIN_NOTIFY_URL needs a secret: set ADMIN_NOTIFY_SECRET"),
    ({"ADMIN_NOTIFY_URL": "https://hooks.example.com", "ADMIN_NOTIFY_SECRET": "tooshort-s3cret"},
     "ADMIN_NOTIFY_SECRET: must be at least 16 characters long"),
    # per actor
    ({"ADMIN_NOTIFY_URL_PAYMENT": "https://pay.example.com"}, "ADMIN_NOTIFY_URL_PAYMENT needs a secret: set ADMIN_NOTIFY_SECRET_PAYMENT"),
    ({"ADMIN_NOTIFY_URL_PAYMENT": "not a url", "ADMIN_NOTIFY_SECRET": SECRET},
     "ADMIN_NOTIFY_URL_PAYMENT: 'not a url' must be an http:// or https:// URL with a host"),
    ({"ADMIN_NOTIFY_URL_PAYMENT": "https://", "ADMIN_NOTIFY_SECRET": SECRET}, "ADMIN_NOTIFY_URL_PAYMENT: 'https://' must be"),
    ({"ADMIN_NOTIFY_URL_PAYMENT": "ftp://u:pw-s3cret@pay.example.com", "ADMIN_NOTIFY_SECRET": SECRET},
     "ADMIN_NOTIFY_URL_PAYMENT: 'ftp://u:***@pay"),
    ({**GOOD, "ADMIN_NOTIFY_SECRET_PAYMENT": "tooshort-s3cret"}, "ADMIN_NOTIFY_SECRET_PAYMENT: must be at least 16 characters long"),
    # the numbers: > 0 and finite
    ({**GOOD, "ADMIN_NOTIFY_RETRY_SECONDS": "0"}, "ADMIN_NOTIFY_RETRY_SECONDS='0': must be > 0"),
    ({**GOOD, "ADMIN_NOTIFY_INTERVAL_SECONDS": "soon"}, "ADMIN_NOTIFY_INTERVAL_SECONDS='soon': is not a number"),
    ({**GOOD, "ADMIN_NOTIFY_TIMEOUT_SECONDS": "-1"}, "ADMIN_NOTIFY_TIMEOUT_SECONDS='-1': must be > 0"),
    ({**GOOD, "ADMIN_NOTIFY_GIVE_UP_HOURS": "inf"}, "ADMIN_NOTIFY_GIVE_UP_HOURS='inf': is not a finite number"),
    ({**GOOD, "ADMIN_NOTIFY_RETRY_SECONDS": "nan"}, "ADMIN_NOTIFY_RETRY_SECONDS='nan': is not a finite number"),
    # the console's address
    ({**GOOD, "ADMIN_PUBLIC_URL": "console.example.com"}, "ADMIN_PUBLIC_URL: 'console.example.com' must be an http:// or https:// URL"),
    ({"ADMIN_PUBLIC_URL": "ftp://console.example.com"}, "ADMIN_PUBLIC_URL: 'ftp://console.example.com' must be"),
])
def test_notifier_settings_are_validated_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        NotifySettings.from_env(env)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text  # one line, naming the variable first
    assert "s3cret" not in text and SECRET not in text  # neither a secret nor a URL's password


def test_notifier_settings_are_a_settings_group_of_the_one_parser() -> None:
    assert issubclass(NotifySettings, EnvSettings)
    assert set(NotifySettings.variables()) == {
        "ADMIN_NOTIFY_URL", "ADMIN_NOTIFY_SECRET", "ADMIN_NOTIFY_INTERVAL_SECONDS", "ADMIN_NOTIFY_TIMEOUT_SECONDS",
        "ADMIN_NOTIFY_RETRY_SECONDS", "ADMIN_NOTIFY_GIVE_UP_HOURS", "ADMIN_PUBLIC_URL"}
    d = NotifySettings.from_env({})
    assert (d.interval_seconds, d.timeout_seconds, d.retry_seconds, d.give_up_hours) == (5, 10, 5, 24)
    assert (d.default_url, d.public_url, d.urls, d.secrets, d.configured) == (None, None, {}, {}, False)
    s = NotifySettings.from_env({**GOOD, "ADMIN_NOTIFY_INTERVAL_SECONDS": " 0.5 ", "ADMIN_NOTIFY_GIVE_UP_HOURS": "",
                                 "ADMIN_PUBLIC_URL": " https://console.example.com/ "})
    assert (s.interval_seconds, s.give_up_hours, s.public_url) == (0.5, 24, "https://console.example.com")


def test_notifier_settings_per_actor_with_a_default() -> None:
    s = NotifySettings.from_env({"ADMIN_NOTIFY_URL": "https://all.example.com/h", "ADMIN_NOTIFY_SECRET": SECRET,
                                 "ADMIN_NOTIFY_URL_CHAT_ALICE": "https://alice.example.com/h",
                                 "ADMIN_NOTIFY_SECRET_PAYMENT": PAYMENT_SECRET, "ADMIN_NOTIFY_URL_ANALYTICS": "off",
                                 "ADMIN_NOTIFY_URL_SHIPPING": " ", "ADMIN_NOTIFY_URL_": "ignored"})
    assert (s.target("chat-alice").url, s.target("chat-alice").secret) == ("https://alice.example.com/h", SECRET)
    assert (s.target("payment").url, s.target("payment").secret) == ("https://all.example.com/h", PAYMENT_SECRET)
    # off: nothing; empty, like any variable: not set, the default applies
    assert s.target("analytics") is None and s.target("shipping").url == "https://all.example.com/h"
    assert SECRET not in repr(s) and PAYMENT_SECRET not in repr(s) and NotifySettings.from_env({}).configured is False
    only = NotifySettings.from_env({"ADMIN_NOTIFY_URL_PAYMENT": "https://u:pw-s3cret@pay.example.com/h",
                                    "ADMIN_NOTIFY_SECRET_PAYMENT": PAYMENT_SECRET})
    assert only.configured and only.target("shipping") is None and only.target("payment").secret == PAYMENT_SECRET
    assert "pw-s3cret" not in repr(only) and "https://u:***@pay.example.com/h" in repr(only)


def test_notifier_cli_refuses_bad_settings_in_one_line(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("ADMIN_NOTIFY_URL", "https://hooks.example.com")
    monkeypatch.delenv("ADMIN_NOTIFY_SECRET", raising=False)
    assert cli.main(["notify", "--once"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ADMIN_NOTIFY_URL needs a secret") and "\n" not in err
    monkeypatch.delenv("ADMIN_NOTIFY_URL")
    assert cli.main(["notify", "--once"]) == 2
    assert "nothing to notify" in capsys.readouterr().err
