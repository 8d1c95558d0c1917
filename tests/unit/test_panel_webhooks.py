"""The panel's Webhooks screen in the in-process app: endpoints (create with the secret
shown once, the API's issues next to the fields, edit with headers kept masked,
disable, test, delete), the delivery log with each attempt's status and answer
excerpt, replay of one delivery and of a range, rotating the signing secret, and who may
open it."""

from __future__ import annotations

import re
import time
from pathlib import Path

from quart import Quart

from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.db.database import Database
from appliance.db.queue import enqueue_many_in
from appliance.messaging import store as messaging_store
from appliance.webhooks import store
from appliance.webhooks.contracts import WEBHOOK_QUEUE, delivery_job_key
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in

ENV = "OUTBOUND_ALLOW_NETWORKS=127.0.0.0/8\n"


async def _delivery(db: Database, endpoint_id: str, *, ok: bool) -> int:
    """A finished delivery with one attempt, as the worker records them."""
    async with db.write() as conn:
        event_id = await messaging_store.append_event(
            conn, "message.received", A, {"id": "x"}, 10.0
        )
        [new] = await store.insert_deliveries(
            conn, [(endpoint_id, event_id, "message.received")], 10.0
        )
        key = delivery_job_key(endpoint_id, event_id)
        job = {"delivery_id": new.id, "endpoint_id": endpoint_id, "event_id": event_id}
        await enqueue_many_in(conn, WEBHOOK_QUEUE, [(job, key)], now=10.0)
        # The worker's outcome: its job finished (done or dead).
        await conn.execute(
            "UPDATE queue_jobs SET state = ? WHERE queue = ? AND unique_key = ?",
            ("done" if ok else "dead", WEBHOOK_QUEUE, key),
        )
        await store.record_attempt(
            conn,
            new.id,
            at=11.0,
            duration_ms=12.4,
            status=200 if ok else 500,
            response="thanks" if ok else "receiver broke: <oops>",
            error=None if ok else "HTTP 500",
        )
        await store.finish_delivery(
            conn,
            new.id,
            state="delivered" if ok else "dead",
            attempted=True,
            status=200 if ok else 500,
            error=None if ok else "HTTP 500",
            now=11.0,
        )
    return new.id


def test_webhook_endpoints_deliveries_and_replay(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        empty = await (await admin.get("/panel/webhooks")).get_data(as_text=True)
        assert "No webhook endpoint yet." in empty and 'href="/panel/webhooks"' in empty
        # Bad input: the API's issue next to the field, nothing stored.
        bad = await admin.post(
            "/panel/webhooks",
            form={"csrf_token": csrf, "url": "ftp://127.0.0.1/x", "events": "message.received"},
        )
        assert bad.status_code == 400
        text = await bad.get_data(as_text=True)
        assert 'aria-describedby="wh-url-error"' in text and 'id="wh-url-error"' in text
        assert not await store.all_endpoints(db)
        bad = await admin.post(
            "/panel/webhooks",
            form={"csrf_token": csrf, "url": "http://127.0.0.1:9/h", "headers": "no colon"},
        )
        assert bad.status_code == 400 and 'id="wh-headers-error"' in await bad.get_data(
            as_text=True
        )
        # Created: the secret is shown once, on this answer only.
        created = await admin.post(
            "/panel/webhooks",
            form={
                "csrf_token": csrf,
                "url": "http://127.0.0.1:9/hook",
                "description": "CRM",
                "events": "message.received",
                "accounts": A,
                "timeout_s": "5",
                "headers": "X-Token: s3cret-header",
            },
        )
        text = await created.get_data(as_text=True)
        assert created.status_code == 201, text
        secret = re.search(r'id="secret-value">(whsec_[^<]+)<', text)
        assert secret, text
        [endpoint] = await store.all_endpoints(db)
        assert endpoint.url == "http://127.0.0.1:9/hook" and endpoint.accounts == [A]
        assert endpoint.event_types == ["message.received"] and endpoint.timeout_s == 5
        assert "s3cret-header" not in str(endpoint.headers)  # stored encrypted
        audit = await auth_store.list_audit(db, before=None, limit=1)
        assert audit[0].action == "webhook.create"
        page = await (await admin.get(f"/panel/webhooks/{endpoint.id}")).get_data(as_text=True)
        assert secret.group(1) not in page and "s3cret-header" not in page
        assert "X-Token: ****" in page and "No delivery yet." in page
        listing = await (await admin.get("/panel/webhooks")).get_data(as_text=True)
        assert f'href="/panel/webhooks/{endpoint.id}"' in listing
        # Edit: every event; the masked header keeps its stored value.
        saved = await admin.post(
            f"/panel/webhooks/{endpoint.id}",
            form={
                "csrf_token": csrf,
                "url": "http://127.0.0.1:9/hook2",
                "events": "*",
                "timeout_s": "7",
                "headers": "X-Token: ****",
            },
        )
        assert saved.status_code == 200 and "Saved." in await saved.get_data(as_text=True)
        changed = await store.get_endpoint(db, endpoint.id)
        assert changed.url.endswith("/hook2") and changed.event_types == ["*"]
        assert changed.headers == endpoint.headers and changed.accounts is None
        # Deliveries: each attempt's status, error and answer excerpt (escaped).
        ok_id = await _delivery(db, endpoint.id, ok=True)
        dead_id = await _delivery(db, endpoint.id, ok=False)
        page = await (await admin.get(f"/panel/webhooks/{endpoint.id}")).get_data(as_text=True)
        assert "HTTP 500" in page and "receiver broke: &lt;oops&gt;" in page
        assert "HTTP 200" in page and "thanks" in page
        assert f"/deliveries/{dead_id}/replay" in page
        dead_only = await (await admin.get(f"/panel/webhooks/{endpoint.id}?state=dead")).get_data(
            as_text=True
        )
        assert f"/deliveries/{dead_id}/replay" in dead_only
        assert f"/deliveries/{ok_id}/replay" not in dead_only
        # Replay one, then a range (the delivered one; the dead one is pending again).
        one = await admin.post(
            f"/panel/webhooks/{endpoint.id}/deliveries/{dead_id}/replay", form={"csrf_token": csrf}
        )
        assert "1 delivery queued again." in await one.get_data(as_text=True)
        replayed = await store.get_delivery(db, endpoint.id, dead_id)
        assert replayed is not None and replayed.state == "pending"
        many = await admin.post(
            f"/panel/webhooks/{endpoint.id}/replay",
            form={"csrf_token": csrf, "state": "any", "since": "1970-01-01T00:00"},
        )
        assert "1 delivery queued again." in await many.get_data(as_text=True)
        bad_range = await admin.post(
            f"/panel/webhooks/{endpoint.id}/replay",
            form={"csrf_token": csrf, "state": "any", "since": "yesterday"},
        )
        assert bad_range.status_code == 400
        assert 'id="replay-since-error"' in await bad_range.get_data(as_text=True)
        # Test event, disable, delete.
        tested = await admin.post(f"/panel/webhooks/{endpoint.id}/test", form={"csrf_token": csrf})
        assert tested.status_code == 303
        events = await db.fetchall("SELECT type FROM events WHERE type = 'webhook.test'")
        assert len(events) == 1
        await admin.post(
            f"/panel/webhooks/{endpoint.id}/enabled", form={"csrf_token": csrf, "enabled": "false"}
        )
        assert not (await store.get_endpoint(db, endpoint.id)).enabled
        gone = await admin.post(f"/panel/webhooks/{endpoint.id}/delete", form={"csrf_token": csrf})
        assert gone.status_code == 303 and not await store.all_endpoints(db)
        assert (await admin.get(f"/panel/webhooks/{endpoint.id}")).status_code == 404

    _run(open_db, db_path, tmp_path, test, ENV)


def test_webhooks_refused_to_agents_and_turkish(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        agent = app.test_client()
        status, _text, csrf = await _sign_in(agent, "agent1")
        assert status == 303
        inbox = await (await agent.get("/panel/inbox")).get_data(as_text=True)
        assert 'href="/panel/webhooks"' not in inbox
        refused = await agent.get("/panel/webhooks")
        assert refused.status_code == 403 and "Not allowed" in await refused.get_data(as_text=True)
        refused = await agent.post(
            "/panel/webhooks", form={"csrf_token": csrf, "url": "http://127.0.0.1:9/h"}
        )
        assert refused.status_code == 403 and not await store.all_endpoints(db)
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1", **{"Accept-Language": "tr"})
        assert status == 303
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "tr"})
        tr = await (await admin.get("/panel/webhooks")).get_data(as_text=True)
        assert "<h1>Webhook\u2019lar</h1>" in tr and "Uç noktay\u0131 ekle" in tr

    _run(open_db, db_path, tmp_path, test, ENV)


def test_rotate_the_signing_secret(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    """As POST /api/webhooks/<id>/rotate-secret, after a confirmation page that says what
    happens to the current secret: the new one shown once (its page then stands for the
    endpoint's own address), both secrets sign for 24 hours, audited; agents get 403."""

    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        created = await admin.post(
            "/panel/webhooks", form={"csrf_token": csrf, "url": "http://127.0.0.1:9/hook"}
        )
        first = re.search(r'id="secret-value">(whsec_[^<]+)<', await created.get_data(as_text=True))
        assert created.status_code == 201 and first
        [endpoint] = await store.all_endpoints(db)
        page = await (await admin.get(f"/panel/webhooks/{endpoint.id}")).get_data(as_text=True)
        assert f'href="/panel/webhooks/{endpoint.id}/rotate-secret"' in page
        assert 'id="previous-secret"' not in page
        # The confirmation: nothing rotated yet; it says what the old secret does.
        confirm = await admin.get(f"/panel/webhooks/{endpoint.id}/rotate-secret")
        text = await confirm.get_data(as_text=True)
        assert confirm.status_code == 200 and "for 24 hours, with the current one too" in text
        assert (await store.get_endpoint(db, endpoint.id)).previous_secret is None
        rotated = await admin.post(
            f"/panel/webhooks/{endpoint.id}/rotate-secret", form={"csrf_token": csrf}
        )
        text = await rotated.get_data(as_text=True)
        assert rotated.status_code == 200, text
        new = re.search(r'id="secret-value">(whsec_[^<]+)<', text)
        assert new and new.group(1) != first.group(1)
        assert f'data-replace-url="/panel/webhooks/{endpoint.id}"' in text
        assert 'id="secret-grace"' in text and "with the previous secret too" in text
        signing = (await store.get_endpoint(db, endpoint.id)).signing_secrets(
            state_of(app).cipher, time.time()
        )
        assert signing == [new.group(1), first.group(1)]
        audit = await auth_store.list_audit(db, before=None, limit=1)
        assert audit[0].action == "webhook.rotate_secret"
        assert audit[0].target == f"webhook:{endpoint.id}"
        assert new.group(1) not in str(audit[0])
        # Shown once: the endpoint's page has neither secret, and says the old one signs.
        page = await (await admin.get(f"/panel/webhooks/{endpoint.id}")).get_data(as_text=True)
        assert new.group(1) not in page and first.group(1) not in page
        assert 'id="previous-secret"' in page
        again = await (await admin.get(f"/panel/webhooks/{endpoint.id}/rotate-secret")).get_data(
            as_text=True
        )
        assert "stops signing now" in again  # a second rotation drops the first secret
        # Agents: 403 on both steps, nothing rotated.
        agent = app.test_client()
        _s, _t, agent_csrf = await _sign_in(agent, "agent1")
        assert (await agent.get(f"/panel/webhooks/{endpoint.id}/rotate-secret")).status_code == 403
        refused = await agent.post(
            f"/panel/webhooks/{endpoint.id}/rotate-secret", form={"csrf_token": agent_csrf}
        )
        assert refused.status_code == 403
        after = (await store.get_endpoint(db, endpoint.id)).signing_secrets(
            state_of(app).cipher, time.time()
        )
        assert after == signing
        missing = await admin.post(
            "/panel/webhooks/wh_nope/rotate-secret", form={"csrf_token": csrf}
        )
        assert missing.status_code == 404

    _run(open_db, db_path, tmp_path, test, ENV)
