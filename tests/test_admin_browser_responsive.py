"""Every page of the console at 1280 and at 390 px (a phone) in a real headless browser (Debian's
chromium driven by Playwright): nothing sticks out of the screen except inside a table that
scrolls in its own box, the navigation fits, forms work, destructive admin actions ask first; times
are UTC whatever the browser's zone, charts included; and the overview during a blocked-actor
incident with traffic shows no ledger/broker divergence.

Set ADMIN_SCREENSHOTS_DIR to keep the screenshots (docs/screenshots holds the committed ones).
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api as playwright_api

from admin import timefmt
from admin.users import UserStore
from backend.app import Backend
from tests.conftest import CHROMIUM
from tests.helpers import PASSWORD, Blocked, set_json_editor, wait_for

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}

# Elements whose right edge is past the viewport, outside any box that scrolls sideways.
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const scrolls = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (["auto", "scroll", "hidden"].includes(getComputedStyle(p).overflowX)) { return true; }
    }
    return false;
  };
  const out = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if ((r.width || r.height) && r.right > width + 1 && !scrolls(el)) {
      out.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}.${el.className} right=${Math.round(r.right)}`);
    }
  }
  const tables = [...document.querySelectorAll("table")].filter(
    (t) => t.scrollWidth > t.clientWidth + 1 && getComputedStyle(t).overflowX !== "auto").map((t) => t.id);
  return {width, scrollWidth: document.documentElement.scrollWidth, out: out.slice(0, 8), tables};
}"""


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's chromium (make test does)", pytrace=False)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, size: str, **options: Any) -> Any:
    width, height = WIDTHS[size]
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    page.csp_errors = []
    page.on("console", lambda msg: "Content Security Policy" in msg.text and page.csp_errors.append(msg.text))
    return page


def log_in(page: Any, url: str, name: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def assert_fits(page: Any, what: str) -> None:
    report = page.evaluate(OVERFLOW_JS)
    assert report["scrollWidth"] <= report["width"], f"{what}: the page scrolls sideways: {report}"
    assert not report["out"], f"{what}: elements stick out of the screen: {report['out']}"
    assert not report["tables"], f"{what}: tables wider than the screen that do not scroll: {report['tables']}"
    # the navigation and the log-out button are on the screen
    for selector in ("header.top nav a >> nth=0", "header.top .logout button"):
        if page.locator(selector).count():
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= report["width"] + 1, f"{what}: {selector} {box}"


@pytest.mark.parametrize("size", list(WIDTHS))
def test_admin_browser_every_page_fits_the_screen(backend: Backend, users: UserStore, blocked: Blocked,
                                                  console_url: str, browser: Any, tmp_path: Path, size: str) -> None:
    shots = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    users.create_token("vera", "prometheus scrape job")
    backend.operations.pause("shipping", "otto", "carrier maintenance window")
    page = open_page(browser, size)
    page.goto(f"{console_url}/login")
    assert_fits(page, "login")
    log_in(page, console_url, "ada")
    pages = {
        "overview": "/",
        "actor": "/actors/payment",
        "actor-filtered": "/actors/payment?status=queued&sort=oldest",
        "message": f"/messages/{blocked.failed_id}",
        "audit": "/audit",
        "users": "/users",
        "not-found": "/actors/no-such-actor",
    }
    for name, path in pages.items():
        page.goto(f"{console_url}{path}")
        page.wait_for_load_state("load")
        assert_fits(page, f"{name} at {size}")
        if size == "phone" and name in ("overview", "actor", "message", "users"):
            page.screenshot(path=str(shots / f"admin-phone-{name}.png"), full_page=True)
    # the edit's confirmation step
    page.goto(f"{console_url}/messages/{blocked.failed_id}")
    set_json_editor(page, "#editor", '{"amount": 15, "customer": {"email": "a@example.com"}}')
    page.click("#editor button:has-text('Check and show the diff')")
    page.locator("#diff").wait_for()
    assert_fits(page, f"edit confirmation at {size}")
    # the charts are drawn within their box
    page.goto(f"{console_url}/")
    page.locator("#chart-processed canvas").first.wait_for()
    assert_fits(page, f"overview with charts at {size}")
    assert page.csp_errors == []


def test_admin_browser_phone_forms_work(backend: Backend, users: UserStore, blocked: Blocked, console_url: str,
                                        browser: Any) -> None:
    page = open_page(browser, "phone")
    log_in(page, console_url, "otto")
    # the navigation: every link reachable
    page.locator("header.top nav a", has_text="Audit").click()
    page.wait_for_url(re.compile(r".*/audit$"))
    page.goto(f"{console_url}/actors/shipping")
    page.fill("input[name=reason]", "carrier maintenance")
    page.get_by_role("button", name="Pause").click()
    assert "Actor shipping paused." in page.content()
    assert backend.ledger.actor("shipping")["paused"]["reason"] == "carrier maintenance"
    # the filters: order and status
    page.goto(f"{console_url}/actors/payment")
    page.select_option("select[name=sort]", "oldest")
    page.select_option("select[name=status]", "queued")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*[?&]sort=oldest"))  # the filtered page loaded, its stylesheet applied
    links = page.locator("#messages tbody a").all_inner_texts()
    assert links == ["3", "4", "5"]
    # a table wider than the phone scrolls in its own box, its first column staying in view
    table = page.locator("#messages")
    assert table.evaluate("t => t.scrollWidth > t.clientWidth")
    table.evaluate("t => { t.scrollLeft = t.scrollWidth; }")
    first = page.locator("#messages tbody tr >> nth=0").locator("td >> nth=0").bounding_box()
    assert first and first["x"] >= 0


def test_admin_browser_destructive_admin_actions_ask_first(backend: Backend, users: UserStore, console_url: str,
                                                           browser: Any) -> None:
    token, record = users.create_token("vera", "ci")
    page = open_page(browser, "phone")
    log_in(page, console_url, "ada")
    page.goto(f"{console_url}/users")
    asked: list[str] = []

    def answer(accept: bool) -> None:
        def handler(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        page.once("dialog", handler)

    vera = page.locator("#users tr", has_text="vera")
    answer(False)
    vera.get_by_role("button", name="Deactivate").click()
    assert asked[-1].startswith("Deactivate vera?") and "1 API token(s) stop working" in asked[-1]
    assert users.get("vera").active
    answer(True)
    vera.get_by_role("button", name="Deactivate").click()
    page.wait_for_selector("text=vera is now deactivated")
    assert not users.get("vera").active
    # a role change names the new role
    otto = page.locator("#users tr", has_text="otto")
    otto.locator("select[name=role]").select_option("viewer")
    answer(False)
    otto.get_by_role("button", name="Set", exact=True).click()
    assert asked[-1].startswith("Change the role of otto from operator to viewer?")
    assert users.get("otto").role.value == "operator"
    # revoking a token
    row = page.locator("#tokens tr", has_text=record["_id"])
    answer(True)
    row.get_by_role("button", name="Revoke").click()
    page.wait_for_selector(f"text=Token {record['_id']} revoked.")
    assert asked[-1].startswith(f"Revoke API token {record['_id']} (ci) of vera?")
    assert users.user_for_token(token) is None


def test_admin_browser_without_script_asks_on_a_confirmation_page(users: UserStore, console_url: str,
                                                                   browser: Any) -> None:
    page = open_page(browser, "phone", java_script_enabled=False)
    log_in(page, console_url, "ada")
    page.goto(f"{console_url}/users")
    page.locator("#users tr", has_text="vera").get_by_role("button", name="Deactivate").click()
    page.locator("#confirm-action").wait_for()
    assert "Deactivate vera?" in page.locator("#confirm-action h1").inner_text()
    assert_fits(page, "confirmation page at phone")
    assert users.get("vera").active
    page.get_by_role("button", name="Yes, go ahead").click()
    page.wait_for_selector("text=vera is now deactivated")
    assert not users.get("vera").active


def test_admin_browser_times_are_utc_whatever_the_browsers_zone(backend: Backend, users: UserStore,
                                                                blocked: Blocked, console_url: str,
                                                                browser: Any) -> None:
    page = open_page(browser, "desktop", timezone_id="America/Los_Angeles", locale="en-US")
    log_in(page, console_url, "vera")
    page.goto(f"{console_url}/messages/{blocked.failed_id}")
    # the JavaScript helper applies timefmt's rules, in UTC
    at = datetime(2024, 5, 1, 23, 34, 56, 789000, tzinfo=timezone.utc)
    assert page.evaluate("iso => fifoqTime.text(iso)", timefmt.iso(at)) == timefmt.text(at) == "2024-05-01 23:34:56 UTC"
    for seconds in (0.4, 5, 59, 60, 303, 3599, 3600, 7500, 86399, 86400, 3 * 86400 + 4 * 3600 + 59):
        then = at - timedelta(seconds=seconds)
        assert page.evaluate("([t, now]) => fifoqTime.relative(t, now)", [timefmt.iso(then), timefmt.iso(at)]) == \
            timefmt.relative(then, at), seconds
    # ages rendered by the server stay current in the page (refreshed by time.js)
    created = page.locator("dd time.when").first
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC · .+", created.inner_text())
    # the charts: UTC in the legend, whatever the browser's zone
    page.goto(f"{console_url}/")
    chart = page.locator("#chart-processed .u-over")
    chart.wait_for()
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] / 2)
    legend = page.locator("#chart-processed .u-legend .u-series").first
    wait_for(lambda: "UTC" in legend.inner_text() and re.search(r"\d\d:\d\d:\d\d UTC", legend.inner_text()) is not None,
             timeout=10, interval=0.2, what="the chart's legend to show the time under the cursor")
    shown = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d):\d\d UTC", legend.inner_text()).group(1)
    now_utc = datetime.now(timezone.utc)
    assert shown in {(now_utc - timedelta(minutes=m)).strftime("%Y-%m-%d %H:%M") for m in range(3)}


def test_admin_browser_overview_during_an_incident_with_traffic_shows_no_divergence(
        backend: Backend, users: UserStore, blocked: Blocked, console_url: str, browser: Any) -> None:
    """payment is blocked and bookings keep coming: the overview, reloaded through several of the
    broker's statistics intervals, never shows a ledger/broker divergence (the ledger counts
    arrivals at once, the broker's figures seconds later)."""
    page = open_page(browser, "phone")
    log_in(page, console_url, "vera")
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            backend.emit_event("tour.booked", {"amount": 100 + i, "customer": {"email": "a@example.com"}})
            i += 1
            stop.wait(0.3)

    emitter = threading.Thread(target=traffic, name="bookings", daemon=True)
    emitter.start()
    seen: list[str] = []
    try:
        end = time.monotonic() + 12
        while time.monotonic() < end:
            page.goto(f"{console_url}/")
            cell = page.locator("#actors tr", has_text="payment").locator("[class^=consistency-]")
            seen.append(cell.get_attribute("class"))
            assert page.locator(".consistency-missing, .consistency-extra, .consistency-no_queue").count() == 0
            assert page.locator(".alert-divergence").count() == 0
    finally:
        stop.set()
        emitter.join(timeout=10)
    assert len(seen) >= 5 and "consistency-ok" in seen, seen
    assert backend.ledger.actor("payment")["blocked"] is not None
