"""The failures board: grouping by fingerprint, the group actions (replay all, cancel all, one JSON
Patch for all), staged releases driven by the console, save-and-replay, trace by correlation id,
and the held message's editor. Real broker, real connector runtime (tests/failure_fixtures.py)."""
from __future__ import annotations

import threading

from flask.testing import FlaskClient

from admin.failures import build_board, fingerprint, handler_frame, normalise_message
from admin.releases import ReleasePlans
from backend.app import Backend
from tests.failure_fixtures import ADD_CURRENCY, Incident, book
from tests.helpers import csrf_token_from, login


def _group(client: FlaskClient) -> dict:
    resp = client.get("/api/failures")
    assert resp.status_code == 200, resp.get_json()
    groups = resp.get_json()["groups"]
    assert len(groups) == 1, groups
    return groups[0]


# -- fingerprints ---------------------------------------------------------------------------------
def test_failures_normalise_message_replaces_ids_and_numbers() -> None:
    a = normalise_message("booking B-0002 of 102 has no currency (message 9f1c2b3a4d5e6f708192a3b4c5d6e7f8)")
    b = normalise_message("booking B-0017 of 3.5 has no currency (message 0123abcd0123abcd0123abcd0123abcd)")
    assert a == b == "booking B-<n> of <n> has no currency (message <id>)"
    assert normalise_message("currency 'XXX' refused") == "currency 'XXX' refused"


def test_failures_handler_frame_skips_the_runtime_and_libraries() -> None:
    tb = ('Traceback (most recent call last):\n'
          '  File "/srv/app/connectors/runtime.py", line 510, in _call\n    handler(msg)\n'
          '  File "/srv/app/myconnectors/payment.py", line 42, in charge\n    provider.charge(p)\n'
          '  File "/usr/lib/python3/dist-packages/requests/api.py", line 59, in request\n    raise X\n'
          'ValueError: refused\n')
    frame = handler_frame(tb)
    assert (frame.file, frame.function, frame.line) == ("myconnectors/payment.py", "charge", 42)
    moved = tb.replace("line 42", "line 57")
    assert fingerprint({"type": "ValueError", "message": "refused", "traceback": tb}) == \
        fingerprint({"type": "ValueError", "message": "refused", "traceback": moved})
    assert fingerprint({"type": "ValueError", "message": "refused", "traceback": tb}) != \
        fingerprint({"type": "KeyError", "message": "refused", "traceback": tb})


# -- the board --------------------------------------------------------------------------------------
def test_failures_board_groups_five_failures_over_three_actors(backend: Backend, incident: Incident,
                                                               viewer: FlaskClient) -> None:
    group = _group(viewer)
    assert group["count"] == 5 and group["actors"] == ["invoicing", "loyalty", "payment"]
    assert group["type"] == "MissingCurrency"
    assert group["message"] == "booking B-<n> of <n> has no currency"
    assert group["frame"]["file"] == "tests/failure_fixtures.py" and group["frame"]["function"] == "settle"
    assert group["first_seen"] <= group["last_seen"]
    assert sorted(m["id"] for m in group["messages"]) == sorted(incident.failed_ids)
    assert group["sample"]["error"]["message"].startswith("booking B-000")
    board = viewer.get("/api/failures").get_json()
    assert (board["blocked_actors"], board["blocked_keys"], board["total_failed"]) == (2, 3, 5)
    assert {(b["actor"], b["key"]) for b in board["blocks"]} == {
        ("invoicing", None), ("loyalty", None), ("payment", "B-0002"), ("payment", "B-0003"), ("payment", "B-0004")}
    page = viewer.get("/failures")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "MissingCurrency" in html and "5 failed" in html and group["fingerprint"] in html
    page = viewer.get(f"/failures/{group['fingerprint']}")
    assert page.status_code == 200 and "canary first" not in page.get_data(as_text=True)  # viewer: no actions
    assert viewer.get("/api/failures/000000000000").status_code == 404


def test_failures_patch_applies_to_each_message_and_refuses_the_one_its_schema_rejects(
        backend: Backend, incident: Incident, operator: FlaskClient) -> None:
    fp = _group(operator)["fingerprint"]
    preview = operator.post(f"/api/failures/{fp}/patch/preview", json={"patch": ADD_CURRENCY})
    assert preview.status_code == 200, preview.get_json()
    items = {i["message_id"]: i for i in preview.get_json()["items"]}
    loyalty_id = incident.failed["loyalty"][0]
    assert items[loyalty_id]["outcome"] == "refused" and "$.currency: 'EUR' is not one of ['GBP']" in items[loyalty_id]["reason"]
    assert all(i["outcome"] == "applies" and '+  "currency": "EUR"' in i["diff"] for k, i in items.items() if k != loyalty_id)
    assert all(backend.ledger.message(i)["version"] == 1 for i in incident.failed_ids)  # the preview wrote nothing
    versions = {k: i["version"] for k, i in items.items()}
    # Someone edits one payment message between the preview and the apply: refused, not overwritten.
    moved = incident.failed["payment"][0]
    backend.operations.edit(moved, dict(backend.ledger.message(moved)["payload"], amount=1), by="someone")
    resp = operator.post(f"/api/failures/{fp}/patch", json={"patch": ADD_CURRENCY, "expected_versions": versions})
    assert resp.status_code == 200, resp.get_json()
    result = resp.get_json()
    outcome = {i["message_id"]: i for i in result["items"]}
    assert result["counts"] == {"applied": 3, "refused": 2}
    assert "version moved from 1 to 2" in outcome[moved]["reason"]
    assert "'EUR' is not one of ['GBP']" in outcome[loyalty_id]["reason"]
    for mid in incident.failed_ids:
        doc = backend.ledger.message(mid)
        if mid in (moved, loyalty_id):
            assert "currency" not in doc["payload"]
        else:
            assert doc["payload"]["currency"] == "EUR" and doc["version"] == 2 and doc["status"] == "failed"
    # Audited as one operation: a summary, and one entry per message with the same operation id.
    rows, _ = backend.audit.find(action="group.patch", limit=50)
    assert {r["details"]["operation"] for r in rows} == {result["operation"]}
    assert sorted(r["message_id"] for r in rows if r["message_id"]) == sorted(incident.failed_ids)
    summary = next(r for r in rows if r["message_id"] is None)
    assert summary["user"] == "otto" and summary["details"]["counts"] == {"applied": 3, "refused": 2}


def test_failures_patch_bad_input_is_a_400(incident: Incident, operator: FlaskClient) -> None:
    fp = _group(operator)["fingerprint"]
    for bad in ("[{", [], [{"op": "frobnicate", "path": "/a"}], [{"op": "add", "path": "currency", "value": 1}],
                [{"op": "add", "path": "/currency"}], {"op": "add"}):
        resp = operator.post(f"/api/failures/{fp}/patch/preview", json={"patch": bad})
        assert resp.status_code == 400, (bad, resp.get_json())
    resp = operator.post(f"/api/failures/{fp}/patch", json={"patch": ADD_CURRENCY})
    assert resp.status_code == 400 and "expected_versions" in resp.get_json()["error"]
    resp = operator.post(f"/api/failures/{fp}/patch", json={"patch": ADD_CURRENCY, "expected_versions": {"x": "1"}})
    assert resp.status_code == 400


def test_failures_patch_html_preview_then_apply(backend: Backend, incident: Incident, operator: FlaskClient) -> None:
    fp = _group(operator)["fingerprint"]
    page = operator.post(f"/failures/{fp}/patch", data={"patch": '[{"op": "add", "path": "/currency", "value": "EUR"}]'})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Apply to 4 message(s)" in html and "refused" in html
    versions = html.split('name="versions" value="')[1].split('"')[0].replace("&#34;", '"')
    page = operator.post(f"/failures/{fp}/patch", data={"patch": '[{"op": "add", "path": "/currency", "value": "EUR"}]',
                                                       "confirm": "1", "versions": versions})
    assert page.status_code == 200 and "Patch applied to 4 message(s), 1 refused" in page.get_data(as_text=True)
    page = operator.post(f"/failures/{fp}/patch", data={"patch": "[{oops"})
    assert page.status_code == 400 and "line 1 column 3" in page.get_data(as_text=True)


def test_failures_replay_all_and_cancel_all(backend: Backend, incident: Incident, operator: FlaskClient,
                                            viewer: FlaskClient) -> None:
    fp = _group(operator)["fingerprint"]
    assert viewer.post(f"/api/failures/{fp}/replay", json={}).status_code == 403
    resp = operator.post(f"/api/failures/{fp}/cancel", json={"reason": "duplicates"})
    assert resp.status_code == 400  # confirm required
    resp = operator.post(f"/api/failures/{fp}/cancel", json={"confirm": True, "reason": " "})
    assert resp.status_code == 400
    loyalty = incident.failed["loyalty"][0]
    resp = operator.post(f"/api/failures/{fp}/cancel", json={"confirm": True, "reason": "no points for these",
                                                             "message_ids": [loyalty, "not-a-member"]})
    assert resp.status_code == 200 and resp.get_json()["counts"] == {"cancelled": 1, "refused": 1}
    assert backend.ledger.message(loyalty)["status"] == "cancelled"
    resp = operator.post(f"/api/failures/{fp}/replay", json={})
    assert resp.get_json()["counts"] == {"replayed": 4}
    assert all(backend.ledger.message(i)["replay_requested"] for ids in (incident.failed["payment"], incident.failed["invoicing"]) for i in ids)
    summary, _ = backend.audit.find(action="group.replay")
    assert len(summary) == 1 and summary[0]["details"]["fingerprint"] == fp


def test_failures_group_forms_need_the_csrf_token(backend: Backend, incident: Incident, csrf_app) -> None:
    client = csrf_app.test_client()
    assert login(client, "otto").status_code == 302
    fp = build_board(backend).groups[0].fingerprint
    assert client.post(f"/failures/{fp}/replay").status_code == 400
    token = csrf_token_from(client.get(f"/failures/{fp}").get_data(as_text=True))
    assert client.post(f"/failures/{fp}/replay", data={"csrf_token": token}).status_code == 302


# -- staged release -----------------------------------------------------------------------------------
def test_failures_release_stops_when_the_canary_fails_again_then_releases_after_a_fix(
        backend: Backend, incident: Incident, app, operator: FlaskClient) -> None:
    plans: ReleasePlans = app.extensions["fifoq_releases"]
    fp = _group(operator)["fingerprint"]
    canary = incident.failed["invoicing"][0]
    resp = operator.post(f"/api/failures/{fp}/release", json={"canary": canary})
    assert resp.status_code == 201, resp.get_json()
    plan_id = resp.get_json()["_id"]
    assert backend.ledger.message(canary)["replay_requested"]
    assert all(backend.ledger.message(i)["replay_requested"] is None for i in incident.failed_ids if i != canary)
    assert operator.post(f"/api/failures/{fp}/release", json={}).status_code == 409  # one at a time per group
    plans.advance_due("test")  # the canary has not run yet: nothing moves
    assert plans.get(plan_id)["state"] == "canary"
    incident.run(backend)  # the canary fails again (no currency yet)
    plans.advance_due("test")
    plan = plans.get(plan_id)
    assert plan["state"] == "stopped" and "failed again" in plan["outcome"]
    assert all(backend.ledger.message(i)["replay_requested"] is None for i in incident.failed_ids)
    # The fix: the patch (loyalty cancelled: its contract has no currency), then a new release.
    operator.post(f"/api/failures/{fp}/cancel", json={"confirm": True, "reason": "no points", "message_ids": incident.failed["loyalty"]})
    items = operator.post(f"/api/failures/{fp}/patch/preview", json={"patch": ADD_CURRENCY}).get_json()["items"]
    operator.post(f"/api/failures/{fp}/patch", json={"patch": ADD_CURRENCY, "expected_versions": {i["message_id"]: i["version"] for i in items}})
    plan_id = operator.post(f"/api/failures/{fp}/release", json={"canary": canary}).get_json()["_id"]
    incident.run(backend)
    plans.advance_due("test")
    plan = plans.get(plan_id)
    assert plan["state"] == "released", plan
    assert [i["state"] for i in plan["items"]] == ["released"] * 3
    incident.run(backend)
    assert all(backend.ledger.message(i)["status"] == "done" for ids in (incident.failed["payment"], incident.failed["invoicing"]) for i in ids)
    # invoicing ran its repaired B-0002, then its next booking, B-0003, which has no currency either.
    assert incident.provider.accepted["invoicing"] == ["B-0001", "B-0002"]
    assert [d["payload"]["booking_id"] for d in backend.ledger.failures() if d["actor"] == "invoicing"] == ["B-0003"]
    assert sorted(incident.provider.accepted["payment"]) == ["B-0001", "B-0002", "B-0003", "B-0004"]
    actions = [r["action"] for r in backend.audit.find(limit=200)[0] if r["action"].startswith("release.")]
    assert sorted(actions) == ["release.canary", "release.done", "release.start", "release.start", "release.stop"]
    assert operator.get(f"/releases/{plan_id}").status_code == 200


def test_failures_release_advances_exactly_once_with_several_console_processes(
        backend: Backend, incident: Incident, app, operator: FlaskClient) -> None:
    fp = _group(operator)["fingerprint"]
    canary = incident.failed["invoicing"][0]
    items = operator.post(f"/api/failures/{fp}/patch/preview", json={"patch": ADD_CURRENCY}).get_json()["items"]
    operator.post(f"/api/failures/{fp}/patch", json={"patch": ADD_CURRENCY, "expected_versions": {i["message_id"]: i["version"] for i in items}})
    plan_id = operator.post(f"/api/failures/{fp}/release", json={"canary": canary}).get_json()["_id"]
    incident.run(backend)
    # Four "processes" (each its own ReleasePlans, as each gunicorn worker has) drive at once.
    workers = [ReleasePlans(backend, backend.store) for _ in range(4)]
    start = threading.Barrier(len(workers))

    def drive(plans: ReleasePlans, n: int) -> None:
        start.wait()
        for _ in range(20):
            plans.advance_due(f"worker-{n}")

    threads = [threading.Thread(target=drive, args=(p, n)) for n, p in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert workers[0].get(plan_id)["state"] == "released"
    replays, _ = backend.audit.find(action="replay", limit=100)
    per_message: dict[str, int] = {}
    for r in replays:
        per_message[r["message_id"]] = per_message.get(r["message_id"], 0) + 1
    assert per_message == {i: 1 for i in incident.failed_ids}  # the canary once, each other once
    done = [r for r in backend.audit.find(limit=200)[0] if r["action"] in ("release.canary", "release.done")]
    assert len(done) == 2


# -- save and replay, the held message's editor, trace -----------------------------------------------
def test_failures_save_and_replay_replays_only_when_the_save_is_accepted(backend: Backend, incident: Incident,
                                                                         operator: FlaskClient) -> None:
    mid = incident.failed["loyalty"][0]
    bad = dict(backend.ledger.message(mid)["payload"], currency="EUR")  # loyalty's schema refuses it
    resp = operator.post(f"/api/messages/{mid}/save-and-replay", json={"payload": bad, "expected_version": 1})
    assert resp.status_code == 422
    assert backend.ledger.message(mid)["replay_requested"] is None
    resp = operator.post(f"/api/messages/{mid}/save-and-replay", json={"payload": bad})
    assert resp.status_code == 400
    mid = incident.failed["invoicing"][0]
    good = dict(backend.ledger.message(mid)["payload"], currency="EUR")
    resp = operator.post(f"/api/messages/{mid}/save-and-replay", json={"payload": good, "expected_version": 2})
    assert resp.status_code == 409 and backend.ledger.message(mid)["replay_requested"] is None
    resp = operator.post(f"/api/messages/{mid}/save-and-replay", json={"payload": good, "expected_version": 1})
    assert resp.status_code == 200 and resp.get_json()["version"] == 2 and resp.get_json()["replay_requested"]
    # The HTML form: one action after the diff.
    mid = incident.failed["payment"][0]
    fixed = '{"booking_id": "B-0002", "amount": 102, "currency": "EUR"}'
    page = operator.post(f"/messages/{mid}/edit", data={"payload": fixed, "and_replay": "1"})
    assert "Save as version 2 and replay" in page.get_data(as_text=True)
    page = operator.post(f"/messages/{mid}/edit", data={"payload": fixed, "and_replay": "1", "confirm": "1",
                                                        "expected_version": "1"}, follow_redirects=True)
    assert "Saved as version 2 and replay requested" in page.get_data(as_text=True)
    assert backend.ledger.message(mid)["replay_requested"]


def test_failures_held_message_page_shows_the_editor(backend: Backend, incident: Incident, operator: FlaskClient) -> None:
    """Regression: a held message (waiting behind its blocked ordering key) can be edited through the
    API, and its page now shows the editor too."""
    book(backend, 2, True)  # a second message for the blocked key B-0002: held behind the failed one
    incident.run(backend)
    held = backend.ledger.held("payment", "B-0002")
    assert len(held) == 1
    html = operator.get(f"/messages/{held[0]['_id']}").get_data(as_text=True)
    assert 'id="editor"' in html and "status-held" in html
    resp = operator.post(f"/messages/{held[0]['_id']}/edit", data={"payload": '{"booking_id": "B-0002", "amount": 5, "currency": "GBP"}'})
    assert resp.status_code == 200 and "Save as version 2" in resp.get_data(as_text=True)


def test_failures_trace_follows_one_booking_across_three_actors(backend: Backend, incident: Incident,
                                                                viewer: FlaskClient) -> None:
    resp = viewer.get("/api/trace/B-0002")
    assert resp.status_code == 200
    trace = resp.get_json()
    assert trace["count"] == 3 and trace["actors"] == ["invoicing", "loyalty", "payment"]
    assert {m["status"] for m in trace["messages"]} == {"failed"}
    assert all(m["created_at"] <= trace["end"] for m in trace["messages"])
    resp = viewer.get("/api/trace/B-0001").get_json()
    assert {m["status"] for m in resp["messages"]} == {"done"} and all(m["duration_seconds"] is not None for m in resp["messages"])
    page = viewer.get("/trace?correlation_id=B-0002")
    assert page.status_code == 200 and page.get_data(as_text=True).count('class="trace-row') == 3
    assert viewer.get("/trace?correlation_id=nope").status_code == 404
    assert viewer.get("/api/trace/nope").status_code == 404
    mid = incident.failed["loyalty"][0]
    resp = viewer.get(f"/trace?correlation_id={mid}")
    assert resp.status_code == 302 and "correlation_id=B-0002" in resp.headers["Location"]
    assert viewer.get("/trace?correlation_id=%00bad").status_code == 400


def test_failures_release_poll_setting_is_validated_and_zero_drives_nothing(backend: Backend, users) -> None:
    import pytest

    from backend.errors import ConfigError
    from tests.helpers import make_app

    for bad in ("soon", "-1", "61"):
        with pytest.raises(ConfigError, match="ADMIN_RELEASE_POLL_SECONDS"):
            make_app(backend, ADMIN_RELEASE_POLL_SECONDS=bad)
    from admin.server import BACKGROUND_KEY, start_background
    from tests.helpers import wait_for

    quiet = make_app(backend, ADMIN_RELEASE_POLL_SECONDS="0")
    assert not quiet.extensions.get(BACKGROUND_KEY)  # no driver job for this console
    busy = make_app(backend, ADMIN_RELEASE_POLL_SECONDS="0.5")
    driver = busy.extensions["fifoq_release_driver"]
    busy.test_client().get("/login")
    assert driver.owner == ""  # not per request: a background job of the console (admin.server)
    assert [name for name, _ in busy.extensions[BACKGROUND_KEY]] == ["release-driver"]
    stop = start_background(busy)
    try:
        wait_for(lambda: driver.owner != "", timeout=10, what="the release driver to start")
    finally:
        stop.set()


def test_failures_release_can_be_aborted_once(backend: Backend, incident: Incident, app, operator: FlaskClient,
                                              viewer: FlaskClient) -> None:
    fp = _group(operator)["fingerprint"]
    plan_id = operator.post(f"/api/failures/{fp}/release", json={}).get_json()["_id"]
    assert viewer.post(f"/api/releases/{plan_id}/abort", json={}).status_code == 403
    resp = operator.post(f"/api/releases/{plan_id}/abort", json={})
    assert resp.status_code == 200 and resp.get_json()["state"] == "aborted"
    assert operator.post(f"/api/releases/{plan_id}/abort", json={}).status_code == 409
    incident.run(backend)
    app.extensions["fifoq_releases"].advance_due("test")
    assert app.extensions["fifoq_releases"].get(plan_id)["state"] == "aborted"
    assert operator.get("/api/releases").get_json()["items"][0]["_id"] == plan_id
    assert operator.get("/api/releases/nope").status_code == 404
