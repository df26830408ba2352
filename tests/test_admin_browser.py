"""End to end in a real headless browser (Debian's chromium driven by Playwright): log in, find the
blocked actor, fix its failed message, replay it and watch the actor drain in order.

Set ADMIN_SCREENSHOTS_DIR to keep screenshots of the main pages (docs/screenshots is where the
committed ones live); otherwise they go to the test's temporary directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from admin.rabbitmq_api import QueueInfo, RabbitAPI
from backend.app import Backend
from connectors.registry import Registry
from connectors.runtime import Runtime
from tests.helpers import PASSWORD, Blocked, set_json_editor, wait_for

pytestmark = pytest.mark.browser
_NO_STATS = QueueInfo.from_api({})


def test_admin_browser_fix_and_replay_a_blocked_actor(backend: Backend, blocked: Blocked, console_url: str,
                                                      browser_page, tmp_path: Path) -> None:
    shots = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser_page
    reg = Registry()
    reg.register("payment", blocked.recorder)
    runtime = Runtime(backend.settings, backend.ledger, reg).start()  # the connector keeps running
    api = RabbitAPI.from_settings(backend.settings)
    try:
        # The broker publishes queue statistics every few seconds: wait for the first ones so
        # that the pages show depths and the consumer rather than "?".
        wait_for(lambda: all((api.queue(backend.settings.queue_name(a)) or _NO_STATS).messages_ready is not None
                             for a in ("payment", "shipping")), timeout=30, interval=0.5, what="queue statistics")
        # Log in.
        page.goto(f"{console_url}/")
        assert "/login" in page.url
        page.fill("input[name=username]", "otto")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        # The board shows payment blocked, with what waits behind it.
        row = page.locator("tr.row-blocked", has_text="payment")
        row.wait_for()
        assert "ValueError" in row.inner_text()
        page.screenshot(path=str(shots / "admin-overview.png"), full_page=True)
        row.get_by_role("link", name="payment", exact=True).click()
        # The actor page: blocked head, error, traceback.
        page.locator("#blocked").wait_for()
        assert "3 message(s) wait behind it" in page.locator("#blocked").inner_text()
        page.screenshot(path=str(shots / "admin-actor-blocked.png"), full_page=True)
        page.locator("#blocked a").first.click()
        # The message page: the payload's markup is shown as text.
        assert "<script>alert('pwned')</script>" in page.locator("#payload").inner_text()
        page.screenshot(path=str(shots / "admin-message.png"), full_page=True)
        # A schema-invalid edit is refused with its JSON path.
        set_json_editor(page, "#editor", json.dumps({"amount": "ten"}))
        page.click("#editor button[type=submit]")
        assert "$.amount" in page.locator("#edit-errors").inner_text()
        wait_for(lambda: page.locator("#live-indicator").get_attribute("data-state") == "on", timeout=10, what="the page to stay live")
        page.screenshot(path=str(shots / "admin-edit-refused.png"), full_page=True)
        # A valid edit: see the diff, confirm.
        set_json_editor(page, "#editor", json.dumps({"amount": 15, "customer": {"email": "a@example.com"}}, indent=2))
        page.click("#editor button[type=submit]")
        assert "+  \"amount\": 15," in page.locator("#diff").inner_text()
        page.screenshot(path=str(shots / "admin-edit-diff.png"), full_page=True)
        page.get_by_role("button", name="Save as version 2").click()
        assert "Saved as version 2" in page.content()
        # Replay, then watch the actor drain in order.
        page.get_by_role("button", name="Replay", exact=True).click()
        assert "Replay requested" in page.content()
        page.goto(f"{console_url}/actors/payment")

        def drained() -> bool:
            page.reload()
            return page.locator("h1 .state-running").count() == 1 and "queued" not in page.locator("#messages").inner_text()

        wait_for(drained, timeout=60, interval=0.5, what="payment to drain after the replay")
        page.screenshot(path=str(shots / "admin-actor-drained.png"), full_page=True)
        assert [m.payload["amount"] for m in blocked.recorder.calls] == [10, -1, 15, 20, 21, 22]
        page.goto(f"{console_url}/audit?actor=payment")
        audit = page.locator("#audit").inner_text()
        assert "edit" in audit and "replay" in audit and "otto" in audit
        page.screenshot(path=str(shots / "admin-audit.png"), full_page=True)
        assert page.csp_errors == []
    finally:
        runtime.stop()
