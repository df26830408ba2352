"""The demo's own scenario end to end in a real headless browser (Debian's chromium driven by
Playwright): the seeded stream with its bad booking (currency "XXX") blocks payment under the demo's
example connectors; an operator logs in, finds payment blocked, fixes the currency in the editor,
confirms the diff, replays, and watches payment drain in emission order.

Set ADMIN_SCREENSHOTS_DIR to keep the screenshots; otherwise they go to the test's temporary directory.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
from pathlib import Path

import pytest

import connectors.examples
from admin.rabbitmq_api import QueueInfo, RabbitAPI
from backend.app import Backend
from connectors.runtime import Runtime
from demo.scenarios import ACTORS, BAD_CURRENCY, Player, Scenario, declare
from tests.helpers import PASSWORD, set_json_editor, wait_for

pytestmark = pytest.mark.browser

SEED = 7
COUNT = 60  # holds the bad booking (the 4th) and payment messages after it (checked below)
PAYMENT_EVENTS = ("tour.booked", "order.paid", "order.cancelled")  # what payment subscribes to (demo.scenarios.declare)
_NO_STATS = QueueInfo.from_api({})
_CHARGED = re.compile(r"^actor=payment message=(\S+) (?:charge|refund) ")


def test_admin_browser_demo_blocked_payment(backend: Backend, console_url: str, browser_page,
                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shots = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    caplog.set_level(logging.INFO, logger="connectors.examples")
    page = browser_page

    # Given the demo's actors and subscriptions and its deterministic stream, played as fast as possible
    declare(backend.subscriptions)
    backend.declare()
    events = Scenario(SEED).take(COUNT)
    payment_events = [(n, p) for n, p in events if n in PAYMENT_EVENTS]
    bad_index = next(i for i, (n, p) in enumerate(payment_events) if p.get("currency") == BAD_CURRENCY)
    assert bad_index < len(payment_events) - 1, "payment messages must wait behind the bad booking"
    backend.start_relay()
    assert Player(backend, seed=SEED, rate=0, count=COUNT).play() == COUNT
    # ... and the demo's example connectors for every demo actor, running in the background
    runtime = Runtime(backend.settings, backend.ledger, connectors.examples.registry).start()
    assert set(runtime.workers) == set(ACTORS)
    api = RabbitAPI.from_settings(backend.settings)
    try:
        wait_for(lambda: (backend.ledger.actor("payment").get("blocked") or {}).get("message_id") is not None,
                 timeout=120, interval=0.2, what="payment to block on the bad booking")
        blocked_id = backend.ledger.actor("payment")["blocked"]["message_id"]
        assert backend.ledger.message(blocked_id)["payload"] == payment_events[bad_index][1]
        # Queue statistics come every few seconds: wait for them so the pages show depths, not "?".
        wait_for(lambda: (api.queue(backend.settings.queue_name("payment")) or _NO_STATS).messages_ready is not None,
                 timeout=60, interval=0.5, what="queue statistics")

        # When an operator logs in, the overview shows payment blocked by the provider's refusal
        page.goto(f"{console_url}/")
        assert "/login" in page.url
        page.fill("input[name=username]", "otto")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        row = page.locator("tr.row-blocked", has_text="payment")
        row.wait_for(timeout=60_000)
        assert "PaymentRefused" in row.inner_text()
        assert page.locator("tr.row-blocked").count() == 1, "only payment is blocked"
        page.screenshot(path=str(shots / "admin-demo-overview-blocked.png"), full_page=True)

        # ... opens payment, then its failed head message
        row.get_by_role("link", name="payment", exact=True).click()
        page.locator("#blocked").wait_for(timeout=30_000)
        assert f"'{BAD_CURRENCY}'" in page.locator("#blocked").inner_text()
        page.locator("#blocked a").first.click()
        page.locator("#payload").wait_for(timeout=30_000)
        assert f'"currency": "{BAD_CURRENCY}"' in page.locator("#payload").inner_text()

        # ... sets the currency to EUR in the editor, checks the diff and confirms it
        editor = page.locator("textarea[name=payload]")
        fixed = dict(json.loads(editor.input_value()), currency="EUR")
        assert fixed == dict(payment_events[bad_index][1], currency="EUR")
        set_json_editor(page, "#editor", json.dumps(fixed, indent=2))
        page.click("#editor button[type=submit]")
        diff = page.locator("#diff").inner_text()
        assert f'-  "currency": "{BAD_CURRENCY}"' in diff and '+  "currency": "EUR"' in diff
        page.get_by_role("button", name="Save as version 2").click()
        assert "Saved as version 2" in page.content()

        # ... and replays it
        page.get_by_role("button", name="Replay", exact=True).click()
        assert "Replay requested" in page.content()

        # Then the actor page shows payment running with nothing queued
        page.goto(f"{console_url}/actors/payment")

        def drained() -> bool:
            page.reload()
            return (page.locator("h1 .state-running").count() == 1
                    and "queued" not in page.locator("#messages").inner_text()
                    and backend.ledger.status_counts("payment")["payment"] == {"done": len(payment_events)})

        wait_for(drained, timeout=120, interval=0.5, what="payment to drain after the replay")
        page.screenshot(path=str(shots / "admin-demo-actor-drained.png"), full_page=True)
        assert page.csp_errors == []

        # ... and the ledger says the handler did the fixed message, then every later one, in emission order
        found = backend.ledger.by_seqs("payment", 0, range(1, len(payment_events) + 1))
        docs = [found[s] for s in sorted(found)]
        assert [(d["event"], d["payload"]) for d in docs] == (
            payment_events[:bad_index] + [(payment_events[bad_index][0], fixed)] + payment_events[bad_index + 1:])
        assert [d["seq"] for d in docs] == list(range(1, len(payment_events) + 1))
        assert all(d["status"] == "done" for d in docs)
        repaired = docs[bad_index]
        assert repaired["_id"] == blocked_id and repaired["version"] == 2 and repaired["attempts"] == 2
        assert repaired["last_error"]["type"] == "PaymentRefused"
        after = docs[bad_index:]
        assert all(a["finished_at"] <= b["started_at"] for a, b in itertools.pairwise(after)), \
            "each later payment started only after the one before it finished"
        assert backend.ledger.actor("payment")["blocked"] is None
        # ... which the payment handler's own log lines agree with (charged/refunded once each, in order)
        charged = [m.group(1) for r in caplog.records if r.name == "connectors.examples"
                   and (m := _CHARGED.match(r.getMessage()))]
        assert charged == [d["_id"] for d in docs]
    finally:
        runtime.stop()
