"""The console over an embedded ledger served by another process (MONGODB_URL=embedded://...),
the development set-up without MongoDB: pages read the served ledger; users live in the console."""
from __future__ import annotations

from backend import ledger_server
from backend.app import Backend
from tests.helpers import PASSWORD, Blocked, login, make_app


def test_admin_embedded_ledger_console_reads_the_served_ledger(backend: Backend, blocked: Blocked) -> None:
    server, url = ledger_server.serve(backend.ledger, audit=backend.audit)
    remote = Backend(backend.settings.with_(mongodb_url=url))
    try:
        assert remote.store is None
        app = make_app(remote)
        app.extensions["fifoq_users"].create("otto", PASSWORD, "operator")
        client = app.test_client()
        assert login(client, "otto").status_code == 302
        data = client.get("/api/overview").get_json()
        payment = next(a for a in data["actors"] if a["name"] == "payment")
        assert payment["state"] == "blocked" and payment["blocked"]["message_id"] == blocked.failed_id
        page = client.get(f"/messages/{blocked.failed_id}").get_data(as_text=True)
        assert "&lt;script&gt;" in page
        resp = client.post("/api/actors/shipping/pause", json={"reason": "via the served ledger"})
        assert resp.status_code == 200
        assert backend.ledger.actor("shipping")["paused"]["reason"] == "via the served ledger"
        assert backend.audit.find(action="pause")[0][0]["user"] == "otto"
    finally:
        server.stop_event.set()
        remote.close()
