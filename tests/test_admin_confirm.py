"""The Users page asks before a destructive change (deactivate, role change, token revocation),
in a dialog with script and on a confirmation page without; and API tokens show their last use."""
from __future__ import annotations

import html
import re
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient

from admin.users import LAST_USE_RESOLUTION_SECONDS, UserStore
from backend.app import Backend
from backend.ledger import utcnow
from tests.helpers import login


def text(resp) -> str:
    return resp.get_data(as_text=True)


def hidden_fields(page: str) -> dict[str, str]:
    form = page[page.index('id="confirm-action"'):]
    return {m.group(1): html.unescape(m.group(2)) for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form)}


def test_admin_confirm_deactivation_asks_first_then_applies(admin_client: FlaskClient, users: UserStore, backend: Backend) -> None:
    users.create_token("vera", "cron")
    resp = admin_client.post("/users/vera/active", data={"active": "0"})
    assert resp.status_code == 200
    page = text(resp)
    assert "Deactivate vera?" in page and "1 API token(s) stop working" in page
    assert users.get("vera").active  # nothing changed yet
    assert not [r for r in backend.audit.find(action="user.deactivate")[0]]
    fields = hidden_fields(page)
    assert fields["active"] == "0" and fields["confirm"] == "yes"
    resp = admin_client.post("/users/vera/active", data=fields, follow_redirects=True)
    assert "vera is now deactivated" in text(resp) and not users.get("vera").active
    # reactivating is not destructive: no question
    resp = admin_client.post("/users/vera/active", data={"active": "1"}, follow_redirects=True)
    assert "vera is now active" in text(resp)


def test_admin_confirm_role_change_asks_only_when_the_role_changes(admin_client: FlaskClient, users: UserStore) -> None:
    page = text(admin_client.post("/users/otto/role", data={"role": "viewer"}))
    assert "Change the role of otto from operator to viewer?" in page and "changes nothing" in page
    assert users.get("otto").role.value == "operator"
    resp = admin_client.post("/users/otto/role", data=hidden_fields(page), follow_redirects=True)
    assert "otto is now viewer" in text(resp) and users.get("otto").role.value == "viewer"
    resp = admin_client.post("/users/otto/role", data={"role": "viewer"}, follow_redirects=True)
    assert "otto is now viewer" in text(resp)  # unchanged: nothing to confirm
    # refused changes are refused at once, not after a question
    resp = admin_client.post("/users/ada/role", data={"role": "viewer"}, follow_redirects=True)
    assert "cannot remove your own admin role" in text(resp)
    resp = admin_client.post("/users/ada/active", data={"active": "0"}, follow_redirects=True)
    assert "cannot deactivate yourself" in text(resp)
    resp = admin_client.post("/users/otto/role", data={"role": "root"}, follow_redirects=True)
    assert "role must be one of" in text(resp)


def test_admin_confirm_token_revocation_asks_first(admin_client: FlaskClient, users: UserStore) -> None:
    token, record = users.create_token("vera", "grafana <b>")
    page = text(admin_client.post(f"/tokens/{record['_id']}/revoke"))
    assert f"Revoke API token {record['_id']} (grafana &lt;b&gt;) of vera?" in page and "cannot be undone" in page
    assert users.user_for_token(token) is not None
    resp = admin_client.post(f"/tokens/{record['_id']}/revoke", data=hidden_fields(page), follow_redirects=True)
    assert "revoked" in text(resp) and users.user_for_token(token) is None
    resp = admin_client.post("/tokens/nope/revoke", follow_redirects=True)
    assert "no API token 'nope'" in html.unescape(text(resp))


def test_admin_confirm_users_page_carries_the_same_questions_for_its_dialogs(admin_client: FlaskClient, users: UserStore) -> None:
    _, record = users.create_token("otto", "ci")
    page = html.unescape(text(admin_client.get("/users")))
    assert 'data-confirm="Deactivate otto? otto can no longer log in' in page
    assert 'data-confirm="Change the role of otto from operator to admin? As admin, otto also manages users' in page
    assert f'data-confirm="Revoke API token {record["_id"]} (ci) of otto? Every client' in page
    # no question for the admin's own account (refused anyway) nor for the role a user already has
    assert "Deactivate ada?" not in page and "from operator to operator" not in page
    assert page.count("data-confirm-input") == 2 * 3 + 1


def test_admin_confirm_page_form_carries_a_csrf_token(csrf_app: Flask, users: UserStore) -> None:
    client = csrf_app.test_client()
    assert login(client, "ada").status_code == 302
    users_page = text(client.get("/users"))
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', users_page).group(1)
    page = text(client.post("/users/vera/active", data={"active": "0", "csrf_token": csrf}))
    fields = hidden_fields(page)
    assert fields["csrf_token"]
    assert client.post("/users/vera/active", data=fields).status_code == 302 and not users.get("vera").active


def test_admin_tokens_record_their_last_use_at_most_once_a_minute(app: Flask, admin_client: FlaskClient, users: UserStore) -> None:
    token, record = users.create_token("vera", "prometheus")
    assert users.token(record["_id"])["last_used_at"] is None
    page = text(admin_client.get("/users"))
    row = page[page.index(f"<code>{record['_id']}</code>"):]
    assert '<td class="last-used"><span class="muted">never</span>' in row[:row.index("</tr>")]
    api = app.test_client()
    assert api.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    first = users.tokens("vera")[0]["last_used_at"]
    assert first is not None and (utcnow() - first).total_seconds() < LAST_USE_RESOLUTION_SECONDS
    assert api.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert users.tokens("vera")[0]["last_used_at"] == first  # within the resolution: no write
    with users.store.op() as db:  # a minute and more later
        db.api_tokens.update_one({"_id": record["_id"]}, {"$set": {"last_used_at": first - timedelta(minutes=2)}})
    assert api.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert users.tokens("vera")[0]["last_used_at"] > first - timedelta(minutes=2)
    # a refused token records nothing
    assert api.get("/api/me", headers={"Authorization": f"Bearer {token[:-2]}xx"}).status_code == 401
    listed = admin_client.get("/api/users").get_json()["tokens"]
    assert listed[0]["last_used_at"].endswith("Z")
    page = text(admin_client.get("/users"))
    row = page[page.index(f"<code>{record['_id']}</code>"):]
    assert '<td class="last-used"><time class="when"' in row[:row.index("</tr>")]
