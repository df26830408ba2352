"""The failures board, staged release, live pages and trace in a real headless browser (Debian's
Chromium driven by Playwright), at desktop (1280 px) and phone (390 px) widths, against the real
broker and the real connector runtime.

Set ADMIN_SCREENSHOTS_DIR to keep the screenshots (docs/screenshots holds the committed ones, taken
at 1280 px); otherwise they go to the test's temporary directory.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from backend.app import Backend
from connectors.runtime import Runtime
from tests.conftest import CHROMIUM
from tests.failure_fixtures import ADD_CURRENCY, Incident
from tests.helpers import PASSWORD, Blocked, set_json_editor, wait_for

pytestmark = pytest.mark.browser
WIDTHS = {1280: 900, 390: 844}


@pytest.fixture(params=sorted(WIDTHS, reverse=True), ids=lambda w: f"{w}px")
def page(request, tmp_path: Path) -> Iterator[playwright_api.Page]:
    width = request.param
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium (make test does)", pytrace=False)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": width, "height": WIDTHS[width]})
        pg = context.new_page()
        pg.width = width  # type: ignore[attr-defined]
        pg.csp_errors = []  # type: ignore[attr-defined]
        pg.on("console", lambda msg: "Content Security Policy" in msg.text and pg.csp_errors.append(msg.text))
        try:
            yield pg
        finally:
            browser.close()


def _shots(tmp_path: Path) -> Path:
    shots = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _shot(page, shots: Path, name: str) -> None:
    # The committed screenshots are the desktop ones; the phone ones get a suffix.
    suffix = "" if page.width == 1280 else f"-{page.width}"
    page.screenshot(path=str(shots / f"{name}{suffix}.png"), full_page=True)


def _login(page, console_url: str, path: str = "/") -> None:
    page.goto(f"{console_url}{path}")
    page.fill("input[name=username]", "otto")
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")


def _fits(page) -> None:
    """Nothing wider than the screen: no horizontal scrolling of the page's content."""
    overflow = page.evaluate("document.querySelector('main').scrollWidth - document.querySelector('main').clientWidth")
    wide = page.evaluate("""Array.from(document.querySelectorAll('main *')).filter(e => e.getBoundingClientRect().right
        > document.querySelector('main').clientWidth + 1).slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)""")
    assert overflow <= 1, f"main content overflows by {overflow}px at {page.width}px: {wide}"


def _group_fp(backend: Backend) -> str:
    from admin.failures import build_board

    return build_board(backend).groups[0].fingerprint


def test_failures_browser_one_patch_fixes_a_group_over_three_actors_and_refuses_one(
        backend: Backend, incident: Incident, console_url: str, page, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    _login(page, console_url, "/failures")
    card = page.locator("article.group")
    card.wait_for()
    assert "MissingCurrency" in card.inner_text() and "5 failed" in card.inner_text()
    assert page.locator("#blocks tbody tr").count() == 5  # 2 blocked actors, 3 blocked keys
    _fits(page)
    _shot(page, shots, "admin-failures")
    card.get_by_role("link", name="Open the group").click()
    page.locator("#patch .cm-editor").wait_for()
    # The editor locates a syntax error, then accepts the patch.
    set_json_editor(page, "#patch", '[{"op": "add", "path": "/currency" "value": "EUR"}]')
    status = page.locator("#patch .editor-status")
    wait_for(lambda: "Syntax error at line 1, column 36" in status.inner_text(), timeout=10,
             what=f"the syntax error (the editor says {status.inner_text()!r})")
    set_json_editor(page, "#patch", json.dumps(ADD_CURRENCY))
    page.click("#patch .editor-format")
    wait_for(lambda: "Valid JSON (7 lines)" in status.inner_text() and page.locator("#patch .cm-lint-marker-error").count() == 0,
             timeout=10, what="the formatted patch")
    _fits(page)
    _shot(page, shots, "admin-failure-group")
    page.get_by_role("button", name="Preview on each message").click()
    page.locator("#patch-items").wait_for()
    assert page.locator(".verdict-applies").count() == 4
    refused = page.locator(".patch-item.outcome-refused")
    assert refused.count() == 1 and "loyalty" in refused.inner_text()
    assert "'EUR' is not one of ['GBP']" in refused.inner_text()
    assert page.locator(".patch-item.outcome-applies .diff").count() == 4
    _fits(page)
    _shot(page, shots, "admin-patch-preview")
    page.get_by_role("button", name="Apply to 4 message(s)").click()
    assert "Patch applied to 4 message(s), 1 refused" in page.locator("h1").inner_text()
    assert page.locator("#patch-results .verdict-applied").count() == 4
    _shot(page, shots, "admin-patch-applied")
    for actor, ids in incident.failed.items():
        for mid in ids:
            doc = backend.ledger.message(mid)
            assert doc["version"] == (1 if actor == "loyalty" else 2)
            assert doc["payload"].get("currency") == (None if actor == "loyalty" else "EUR")
    assert page.csp_errors == []


def test_failures_browser_canary_release_stops_on_failure_and_releases_after_success(
        backend: Backend, incident: Incident, console_url: str, page, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    runtime = Runtime(backend.settings, backend.ledger, incident.provider.registry()).start()
    try:
        fp = _group_fp(backend)
        canary = incident.failed["invoicing"][0]
        _login(page, console_url, f"/failures/{fp}")
        page.select_option("#release-form select[name=canary]", canary)
        page.get_by_role("button", name="Staged release: canary first").click()
        page.locator("#release-live").wait_for()
        page.evaluate("window.__sameDocument = true")
        # The canary fails again (nothing is fixed yet): the page says so by itself.
        wait_for(lambda: "failed again" in page.locator("#release-outcome").inner_text(), timeout=60, interval=0.3,
                 what="the release page to show the canary's failure")
        assert page.locator("h1 .plan-stopped").count() == 1
        assert page.evaluate("window.__sameDocument === true")  # updated in place, no reload
        assert all(backend.ledger.message(i)["replay_requested"] is None for i in incident.failed_ids)
        _fits(page)
        _shot(page, shots, "admin-release-stopped")
        # The fix (the group's patch; loyalty's pounds-only contract: cancelled), then a new release.
        for actor in ("payment", "invoicing"):
            for mid in incident.failed[actor]:
                backend.operations.edit(mid, dict(backend.ledger.message(mid)["payload"], currency="EUR"), by="otto")
        backend.operations.cancel(incident.failed["loyalty"][0], by="otto", reason="pounds only")
        page.goto(f"{console_url}/failures/{fp}")
        page.select_option("#release-form select[name=canary]", canary)
        page.get_by_role("button", name="Staged release: canary first").click()
        page.locator("#release-live").wait_for()
        release_url = page.url
        page.close()  # the operator closes the tab: the console drives the release on its own
        plans = None

        def released() -> bool:
            nonlocal plans
            plan_id = release_url.rsplit("/", 1)[1]
            from admin.releases import COLLECTION

            with backend.store.op() as db:
                plans = db[COLLECTION].find_one({"_id": plan_id})
            return plans is not None and plans["state"] == "released"

        wait_for(released, timeout=60, interval=0.3, what="the console to release the rest after the canary")
        wait_for(lambda: all(backend.ledger.message(i)["status"] == "done" for i in incident.failed["payment"]),
                 timeout=60, interval=0.3, what="payment's repaired keys to run")
        assert sorted(incident.provider.accepted["payment"]) == ["B-0001", "B-0002", "B-0003", "B-0004"]
        again = page.context.new_page()
        again.goto(release_url)
        assert again.locator("h1 .plan-released").count() == 1
        # The rest: payment's three keys, and loyalty's next booking (it ran once B-0002 was cancelled
        # and failed the same way, so it joined the group before the release started).
        assert f"canary succeeded; {len(plans['items'])} released" in again.locator("#release-outcome").inner_text()
        assert {i["actor"] for i in plans["items"]} >= {"payment"}
        again.width = page.width  # type: ignore[attr-defined]
        _shot(again, shots, "admin-release-released")
    finally:
        runtime.stop()


def test_failures_browser_pages_show_a_drain_without_reload(backend: Backend, blocked: Blocked,
                                                            console_url: str, page, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    from connectors.registry import Registry

    reg = Registry()
    reg.register("payment", blocked.recorder)
    runtime = Runtime(backend.settings, backend.ledger, reg).start()
    try:
        _login(page, console_url, "/actors/payment")
        # A second tab on the actor page watches the drain.
        actor_page = page.context.new_page()
        actor_page.width = page.width  # type: ignore[attr-defined]
        actor_page.goto(f"{console_url}/actors/payment")
        assert actor_page.locator("h1 .state-blocked").count() == 1
        actor_page.evaluate("window.__sameDocument = true")
        page.goto(f"{console_url}/messages/{blocked.failed_id}")
        assert "this message blocks payment" in page.locator("#message-live").inner_text()
        page.locator("#editor .cm-editor").wait_for()
        wait_for(lambda: page.locator("#live-indicator").get_attribute("data-state") == "on", timeout=10, what="live")
        set_json_editor(page, "#editor", json.dumps({"amount": 15, "customer": {"email": "a@example.com"}}, indent=2))
        page.click("#save-and-replay")
        page.get_by_role("button", name="Save as version 2 and replay").click()
        assert "Saved as version 2 and replay requested" in page.locator(".flash").inner_text()
        page.evaluate("window.__sameDocument = true")
        # The message page turns `done` by itself and stops saying it blocks payment.
        wait_for(lambda: page.locator("h1 .status-done").count() == 1, timeout=60, interval=0.3,
                 what=f"the message page to show the replay's success (ledger: {backend.ledger.message(blocked.failed_id)['status']}, "
                      f"page: {page.locator('h1').inner_text()!r}, {page.locator('#live-indicator').inner_text()!r})")
        assert "blocks payment" not in page.locator("#message-live").inner_text()
        assert page.locator("#editor").count() == 0  # a done message has no editor any more
        assert page.evaluate("window.__sameDocument === true")
        _shot(page, shots, "admin-message-live")  # (the message page's phone layout is console.css's)
        # The actor page: running, and the drain it watched.
        wait_for(lambda: actor_page.locator("h1 .state-running").count() == 1
                 and "4 of 4 drained" in actor_page.locator("#drain-text").inner_text(),
                 timeout=60, interval=0.3, what="the actor page to show the drain")
        assert actor_page.evaluate("window.__sameDocument === true")
        assert actor_page.evaluate("document.getElementById('drain-progress').value") == 4
        assert "queued" not in actor_page.locator("#messages").inner_text()
        _shot(actor_page, shots, "admin-actor-live-drained")
        # A hidden tab stops polling and says so.
        actor_page.evaluate("Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
                            "document.dispatchEvent(new Event('visibilitychange'))")
        assert actor_page.locator("#live-indicator").get_attribute("data-state") == "paused"
        assert [m.payload["amount"] for m in blocked.recorder.calls] == [10, -1, 15, 20, 21, 22]
        assert page.csp_errors == []
    finally:
        runtime.stop()


def test_failures_browser_trace_across_three_actors(backend: Backend, incident: Incident,
                                                   console_url: str, page, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    _login(page, console_url, "/")
    page.fill("header .trace-search input[name=correlation_id]", "B-0002")
    page.press("header .trace-search input[name=correlation_id]", "Enter")
    rows = page.locator("#trace tbody tr")
    rows.first.wait_for()
    assert rows.count() == 3
    text = page.locator("#trace").inner_text()
    assert all(actor in text for actor in ("payment", "invoicing", "loyalty"))
    assert page.locator("#trace .status-failed").count() == 3
    assert page.locator("#trace svg.trace-bar rect.bar").count() == 3
    assert "3 message(s) across 3 actor(s)" in page.locator("#trace-summary").inner_text()
    _fits(page)
    _shot(page, shots, "admin-trace")
    # From a message: its correlation id leads to the same trace.
    page.locator("#trace tbody tr a", has_text="#").first.click()
    page.get_by_role("link", name="B-0002").click()
    assert page.locator("#trace tbody tr").count() == 3
    assert page.csp_errors == []
