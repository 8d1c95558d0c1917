"""Tags, private notes and quick replies against the real installation (sandbox engine):
roles, grants, bulk tagging, rename and delete, mentions and notifications, quick
replies rendered per contact, idempotent sends, events and audit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, login, new_api_key

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
WAIT_S = 30.0
PASSWORD = "inbox-password-1"
ANA, BORA, CEM = "+905553330001", "+905553330002", "+905553330003"
OTHER = "+905553339999"  # writes to account b only


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _jid(phone: str) -> str:
    return f"{phone.lstrip('+')}@s.whatsapp.net"


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        response.request.method,
        response.request.url,
        response.text,
    )
    return response.json() if status != 204 else None


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (
        response.request.method,
        response.request.url,
        response.text,
    )
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["requestId"] == response.headers["X-Request-ID"]
    return body  # type: ignore[no-any-return]


@dataclass
class World:
    app: Appliance
    a: str
    b: str
    admin: httpx.Client
    manager: httpx.Client  # session of a manager granted a
    agent: httpx.Client  # session of agent 1, granted a
    agent2: httpx.Client  # session of agent 2, granted a
    outsider: httpx.Client  # session of an agent granted b only
    names: dict[str, str]  # role -> username


@pytest.fixture(scope="module")
def world(appliance: Appliance) -> Iterator[World]:
    suffix = uuid.uuid4().hex[:6]
    a, b = f"org_a_{suffix}", f"org_b_{suffix}"
    with bearer(appliance, new_api_key(appliance, f"org-admin-{suffix}", "admin")) as admin:
        for account in (a, b):
            _ok(
                admin.post(
                    "/api/accounts",
                    json={"id": account, "name": account, "engine_settings": FAST_SANDBOX},
                ),
                201,
            )
        names = {
            "manager": f"boss{suffix}",
            "agent": f"maria{suffix}",
            "agent2": f"erin{suffix}",
            "outsider": f"otto{suffix}",
        }
        for who, role, accounts in (
            ("manager", "manager", [a]),
            ("agent", "agent", [a]),
            ("agent2", "agent", [a]),
            ("outsider", "agent", [b]),
        ):
            _ok(
                admin.post(
                    "/api/users",
                    json={
                        "username": names[who],
                        "password": PASSWORD,
                        "role": role,
                        "accounts": accounts,
                    },
                ),
                201,
            )
        for phone, name in ((ANA, "Ana"), (BORA, None), (CEM, "Cem")):
            body: dict[str, Any] = {"from": phone, "type": "text", "text": {"body": "merhaba"}}
            if name:
                body["name"] = name
            _ok(admin.post(f"/api/accounts/{a}/sandbox/inbound", json=body), 202)
        _ok(
            admin.post(
                f"/api/accounts/{b}/sandbox/inbound",
                json={"from": OTHER, "type": "text", "text": {"body": "b"}},
            ),
            202,
        )

        def chats(account: str) -> set[str]:
            page = _ok(admin.get(f"/api/accounts/{account}/chats"))
            return {c["id"] for c in page["items"]}

        _wait(lambda: chats(a) >= {_jid(ANA), _jid(BORA), _jid(CEM)}, "the chats of a")
        _wait(lambda: _jid(OTHER) in chats(b), "the chat of b")
        sessions = {who: login(appliance, names[who], PASSWORD) for who in names}
        with (
            sessions["manager"] as manager,
            sessions["agent"] as agent,
            sessions["agent2"] as agent2,
            sessions["outsider"] as outsider,
        ):
            yield World(appliance, a, b, admin, manager, agent, agent2, outsider, names)


def _chat_tags(c: httpx.Client, account: str, phone: str) -> list[str]:
    return [t["name"] for t in _ok(c.get(f"/api/accounts/{account}/chats/{phone}"))["tags"]]


def _events(c: httpx.Client, account: str, types: str) -> list[dict[str, Any]]:
    page = _ok(c.get("/api/events", params={"account": account, "types": types, "limit": 1000}))
    return page["items"]  # type: ignore[no-any-return]


def test_agents_cannot_manage_tags_or_quick_replies(world: World) -> None:
    a, agent = world.a, world.agent
    made = _ok(world.manager.post(f"/api/accounts/{a}/tags", json={"name": "Agents-403"}), 201)
    reply = _ok(
        world.manager.post(
            f"/api/accounts/{a}/quick-replies",
            json={"name": "Hello", "shortcut": "/hello403", "body": "Hello!"},
        ),
        201,
    )
    for response in (
        agent.post(f"/api/accounts/{a}/tags", json={"name": "mine"}),
        agent.patch(f"/api/accounts/{a}/tags/{made['id']}", json={"name": "renamed"}),
        agent.delete(f"/api/accounts/{a}/tags/{made['id']}"),
        agent.post(
            f"/api/accounts/{a}/quick-replies",
            json={"name": "x", "shortcut": "/x403", "body": "x"},
        ),
        agent.patch(f"/api/accounts/{a}/quick-replies/{reply['id']}", json={"name": "y"}),
        agent.delete(f"/api/accounts/{a}/quick-replies/{reply['id']}"),
    ):
        _error(response, 403)
    # What agents may do: read both, tag chats, use quick replies.
    assert made["id"] in {t["id"] for t in _ok(agent.get(f"/api/accounts/{a}/tags"))["items"]}
    _ok(agent.get(f"/api/accounts/{a}/quick-replies/{reply['id']}"))
    applied = agent.post(f"/api/accounts/{a}/tagging", json={"add": [made["id"]], "chats": [CEM]})
    assert _ok(applied) == {"chats_changed": 1, "contacts_changed": 0}
    assert "Agents-403" in _chat_tags(agent, a, CEM)
    assert _ok(world.manager.get(f"/api/accounts/{a}/tags/{made['id']}"))["name"] == "Agents-403"


def test_out_of_grant_chats_answer_404(world: World) -> None:
    a, b, outsider = world.a, world.b, world.outsider
    tag = _ok(world.manager.post(f"/api/accounts/{a}/tags", json={"name": "grant-404"}), 201)
    note = _ok(world.agent.post(f"/api/accounts/{a}/chats/{ANA}/notes", json={"body": "n"}), 201)
    reply = _ok(
        world.manager.post(
            f"/api/accounts/{a}/quick-replies",
            json={"name": "G", "shortcut": "/grant404", "body": "g"},
        ),
        201,
    )
    send = {"to": ANA, "type": "quick_reply", "quick_reply": {"id": reply["id"]}}
    for response in (
        outsider.get(f"/api/accounts/{a}/tags"),
        outsider.get(f"/api/accounts/{a}/chats", params={"tag": "grant-404"}),
        outsider.post(f"/api/accounts/{a}/tagging", json={"add": [tag["id"]], "chats": [ANA]}),
        outsider.get(f"/api/accounts/{a}/contacts/{ANA}/tags"),
        outsider.get(f"/api/accounts/{a}/chats/{ANA}/notes"),
        outsider.post(f"/api/accounts/{a}/chats/{ANA}/notes", json={"body": "hi"}),
        outsider.patch(f"/api/accounts/{a}/chats/{ANA}/notes/{note['id']}", json={"body": "x"}),
        outsider.delete(f"/api/accounts/{a}/chats/{ANA}/notes/{note['id']}"),
        outsider.get(f"/api/accounts/{a}/quick-replies"),
        outsider.post(f"/api/accounts/{a}/quick-replies/{reply['id']}/render", json={"to": ANA}),
        outsider.post(f"/api/accounts/{a}/messages", json=send),
        # The granted account does not reach a's objects by id either.
        outsider.get(f"/api/accounts/{b}/tags/{tag['id']}"),
        outsider.get(f"/api/accounts/{b}/chats/{ANA}/notes"),
        outsider.get(f"/api/accounts/{b}/quick-replies/{reply['id']}"),
        world.agent.get(f"/api/accounts/{b}/chats/{OTHER}/notes"),
    ):
        _error(response, 404)
    # A quick reply of another account, named in a send of the granted one: 422.
    wrong = _error(outsider.post(f"/api/accounts/{b}/messages", json={**send, "to": OTHER}), 422)
    assert wrong["issues"][0]["path"] == "quick_reply.id"
    assert _ok(outsider.get(f"/api/accounts/{b}/chats/{OTHER}/notes")) == {
        "items": [],
        "next": None,
    }


def test_bulk_tags_rename_and_delete_propagate(world: World) -> None:
    a, manager, agent = world.a, world.manager, world.agent
    vip = _ok(manager.post(f"/api/accounts/{a}/tags", json={"name": "VIP", "color": "#ABC"}), 201)
    late = _ok(manager.post(f"/api/accounts/{a}/tags", json={"name": " pays  late "}), 201)
    assert (vip["color"], late["name"]) == ("#aabbcc", "pays late")
    _error(manager.post(f"/api/accounts/{a}/tags", json={"name": "vip"}), 409)

    bulk = {"add": [vip["id"], late["id"]], "chats": [ANA, _jid(BORA)], "contacts": [ANA]}
    assert _ok(agent.post(f"/api/accounts/{a}/tagging", json=bulk)) == {
        "chats_changed": 2,
        "contacts_changed": 1,
    }
    assert _ok(agent.post(f"/api/accounts/{a}/tagging", json=bulk)) == {
        "chats_changed": 0,
        "contacts_changed": 0,
    }
    removed = {"remove": [late["id"]], "chats": [BORA, CEM]}
    assert _ok(agent.post(f"/api/accounts/{a}/tagging", json=removed))["chats_changed"] == 1
    # All or nothing: one unknown chat and nothing is applied; each unknown is named.
    refused = _error(
        agent.post(
            f"/api/accounts/{a}/tagging",
            json={"add": [vip["id"], 999999999], "chats": [CEM, "+905553330404"]},
        ),
        422,
    )
    assert {i["path"] for i in refused["issues"]} == {"add.1", "chats.1"}
    assert "VIP" not in _chat_tags(agent, a, CEM)

    assert _chat_tags(agent, a, ANA) == ["pays late", "VIP"]
    assert _chat_tags(agent, a, BORA) == ["VIP"]
    tagged = _ok(agent.get(f"/api/accounts/{a}/chats", params={"tag": "vip"}))["items"]
    assert sorted(c["id"] for c in tagged) == sorted([_jid(ANA), _jid(BORA)])
    assert _ok(agent.get(f"/api/accounts/{a}/chats", params={"tag": "nope"}))["items"] == []
    counts = {
        t["name"]: (t["chat_count"], t["contact_count"])
        for t in _ok(agent.get(f"/api/accounts/{a}/tags"))["items"]
    }
    assert counts["VIP"] == (2, 1) and counts["pays late"] == (1, 1)

    # Rename: every chat shows it at once; the filter follows the new name.
    renamed = _ok(manager.patch(f"/api/accounts/{a}/tags/{vip['id']}", json={"name": "Gold"}))
    assert renamed["name"] == "Gold" and renamed["color"] == "#aabbcc"
    assert _chat_tags(agent, a, ANA) == ["Gold", "pays late"]
    assert _chat_tags(agent, a, BORA) == ["Gold"]
    assert len(_ok(agent.get(f"/api/accounts/{a}/chats", params={"tag": "GOLD"}))["items"]) == 2
    _error(manager.patch(f"/api/accounts/{a}/tags/{late['id']}", json={"name": "gold"}), 409)

    # Delete: gone from every chat and contact.
    _ok(manager.delete(f"/api/accounts/{a}/tags/{late['id']}"), 204)
    assert _chat_tags(agent, a, ANA) == ["Gold"]
    contact = _ok(agent.get(f"/api/accounts/{a}/contacts/{ANA}/tags"))
    assert contact["contact_id"] == _jid(ANA)
    assert [t["name"] for t in contact["tags"]] == ["Gold"]
    _error(manager.get(f"/api/accounts/{a}/tags/{late['id']}"), 404)

    # Events say who did it; manager actions are in the audit log.
    changes = [
        e
        for e in _events(world.admin, a, "chat.updated")
        if any(t["id"] == vip["id"] for t in e["data"]["tags_added"] + e["data"]["tags_removed"])
    ]
    assert len(changes) == 2
    assert {e["data"]["by"]["name"] for e in changes} == {world.names["agent"]}
    contact_events = _events(world.admin, a, "contact.updated")
    assert any(e["data"]["contact_id"] == _jid(ANA) for e in contact_events)
    updated = [
        e for e in _events(world.admin, a, "tag.updated") if e["data"]["tag"]["id"] == vip["id"]
    ]
    assert updated[0]["data"]["before"]["name"] == "VIP"
    assert updated[0]["data"]["by"]["name"] == world.names["manager"]
    deleted = [
        e for e in _events(world.admin, a, "tag.deleted") if e["data"]["tag"]["id"] == late["id"]
    ]
    assert deleted[0]["data"]["chats_untagged"] == 1
    audit = _ok(world.admin.get("/api/audit", params={"limit": 200}))["items"]
    actions = {(e["action"], e["target"]) for e in audit}
    assert {("tag.update", f"tag:{vip['id']}"), ("tag.delete", f"tag:{late['id']}")} <= actions


def test_mentions_notify_only_the_mentioned_user(world: World) -> None:
    a, agent, agent2, manager = world.a, world.agent, world.agent2, world.manager
    names = world.names

    def unread(c: httpx.Client) -> list[dict[str, Any]]:
        page = _ok(c.get("/api/me/notifications", params={"unread": "true", "limit": 200}))
        return [n for n in page["items"] if n["account_id"] == a]

    before = {
        who: len(unread(c))
        for who, c in (
            ("agent", agent),
            ("agent2", agent2),
            ("manager", manager),
            ("out", world.outsider),
        )
    }
    text = (
        f"@{names['agent2'].upper()} can you call? (not @{names['outsider']}, "
        f"who cannot see this account)"
    )
    note = _ok(agent.post(f"/api/accounts/{a}/chats/{CEM}/notes", json={"body": text}), 201)
    assert [m["username"] for m in note["mentions"]] == [names["agent2"]]
    assert note["author"]["name"] == names["agent"] and note["edited_at"] is None

    mentioned = unread(agent2)
    assert len(mentioned) == before["agent2"] + 1
    assert mentioned[0]["note_id"] == note["id"] and mentioned[0]["chat_id"] == _jid(CEM)
    assert mentioned[0]["by"]["name"] == names["agent"]
    assert len(unread(agent)) == before["agent"]
    assert len(unread(manager)) == before["manager"]
    assert len(unread(world.outsider)) == before["out"]

    # Only the author or a manager edits; the manager's edit is audited.
    _error(
        agent2.patch(
            f"/api/accounts/{a}/chats/{CEM}/notes/{note['id']}", json={"body": "mine now"}
        ),
        403,
    )
    edited = _ok(
        agent.patch(
            f"/api/accounts/{a}/chats/{CEM}/notes/{note['id']}", json={"body": text + " thanks"}
        )
    )
    assert edited["edited_at"] is not None
    assert len(unread(agent2)) == before["agent2"] + 1  # not notified twice
    _ok(
        manager.patch(
            f"/api/accounts/{a}/chats/{CEM}/notes/{note['id']}",
            json={"body": f"@{names['agent']} please follow up"},
        )
    )
    assert len(unread(agent)) == before["agent"] + 1
    listed = _ok(agent.get(f"/api/accounts/{a}/chats/{CEM}/notes"))["items"]
    assert listed[0]["id"] == note["id"] and listed[0]["body"].endswith("follow up")
    audit = _ok(world.admin.get("/api/audit", params={"limit": 200}))["items"]
    assert ("note.update", f"note:{note['id']}") in {(e["action"], e["target"]) for e in audit}

    # Marking read is per user.
    read = _ok(agent2.post("/api/me/notifications/read", json={"ids": [mentioned[0]["id"]]}))
    assert read["changed"] == 1
    assert len(unread(agent2)) == before["agent2"]
    assert len(unread(agent)) == before["agent"] + 1

    # Never sent to WhatsApp: no message carries the note's text.
    messages = _ok(world.admin.get(f"/api/accounts/{a}/chats/{CEM}/messages"))["items"]
    assert all("follow up" not in str(m["content"]) for m in messages)
    _error(agent2.delete(f"/api/accounts/{a}/chats/{CEM}/notes/{note['id']}"), 403)
    _ok(agent.delete(f"/api/accounts/{a}/chats/{CEM}/notes/{note['id']}"), 204)
    assert len(unread(agent)) == before["agent"]  # its notification went with it
    types = [
        e["type"]
        for e in _events(world.admin, a, "note.created,note.updated,note.deleted")
        if e["data"]["id"] == note["id"]
    ]
    assert types == ["note.created", "note.updated", "note.updated", "note.deleted"]


def test_quick_reply_renders_per_contact_and_sends_once(world: World) -> None:
    a, manager, agent = world.a, world.manager, world.agent
    reply = _ok(
        manager.post(
            f"/api/accounts/{a}/quick-replies",
            json={
                "name": "Price",
                "shortcut": "/Price",
                "body": "Hi {{contact.name|there}}, {{item}} costs {{price}} "
                "({{chat.phone}}). {{agent.name}}",
            },
        ),
        201,
    )
    assert reply["shortcut"] == "/price" and reply["variables"] == ["item", "price"]
    _error(
        manager.post(
            f"/api/accounts/{a}/quick-replies",
            json={"name": "Again", "shortcut": "/price", "body": "x"},
        ),
        409,
    )

    def send(to: str, key: str | None = None, **variables: str) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        body = {
            "to": to,
            "type": "quick_reply",
            "quick_reply": {"id": reply["id"], "variables": variables},
        }
        return agent.post(f"/api/accounts/{a}/messages", json=body, headers=headers)

    def text_of(message_id: str) -> str:
        message = _ok(agent.get(f"/api/accounts/{a}/messages/{message_id}"))
        assert message["type"] == "text" and message["origin"] == "api"
        return str(message["content"]["text"]["body"])

    ana = _ok(send(ANA, item="tea", price="5 TL"), 202)
    bora = _ok(send(_jid(BORA), item="coffee", price="7 TL"), 202)
    me = world.names["agent"]
    assert text_of(ana["id"]) == f"Hi Ana, tea costs 5 TL ({ANA}). {me}"
    assert text_of(bora["id"]) == f"Hi there, coffee costs 7 TL ({BORA}). {me}"
    preview = _ok(
        agent.post(
            f"/api/accounts/{a}/quick-replies/{reply['id']}/render",
            json={"to": CEM, "variables": {"item": "x", "price": "1"}},
        )
    )
    assert preview == {
        "type": "text",
        "content": {
            "type": "text",
            "text": {"body": f"Hi Cem, x costs 1 ({CEM}). {me}", "preview_url": False},
        },
    }

    # Unknown and missing variables: 400 naming each; nothing is queued.
    count = len(_ok(agent.get(f"/api/accounts/{a}/chats/{CEM}/messages"))["items"])
    refused = _error(send(CEM, item="tea", colour="red"), 400)
    assert "colour" in refused["error"] and "price" in refused["error"]
    assert {(i["path"], i["code"]) for i in refused["issues"]} == {
        ("quick_reply.variables.colour", "unknown_variable"),
        ("quick_reply.variables.price", "missing_variable"),
    }
    assert len(_ok(agent.get(f"/api/accounts/{a}/chats/{CEM}/messages"))["items"]) == count
    _error(send(CEM, key=f"bad-{uuid.uuid4()}", item="tea"), 400)

    # The same Idempotency-Key twice: one message, sent once.
    key = str(uuid.uuid4())
    first = send(CEM, key=key, item="cake", price="3 TL")
    second = send(CEM, key=key, item="cake", price="3 TL")
    assert _ok(first, 202)["id"] == _ok(second, 202)["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    message_id = first.json()["id"]

    def sent() -> bool:
        status = _ok(agent.get(f"/api/accounts/{a}/messages/{message_id}"))["status"]
        return status in ("sent", "delivered", "read")

    _wait(sent, "the quick reply sent")
    cakes = [
        m
        for m in _ok(agent.get(f"/api/accounts/{a}/chats/{CEM}/messages"))["items"]
        if "cake" in str(m["content"])
    ]
    assert [m["id"] for m in cakes] == [message_id]
    sends = [e for e in _events(world.admin, a, "message.sent") if e["data"]["id"] == message_id]
    assert len(sends) == 1

    # A quick reply with media (uploaded to the account: no link leaves the machine):
    # the rendered body is the caption.
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
    upload = _ok(
        manager.post(
            f"/api/accounts/{a}/media", files={"file": ("menu.pdf", pdf, "application/pdf")}
        ),
        201,
    )
    _error(
        manager.patch(
            f"/api/accounts/{a}/quick-replies/{reply['id']}",
            json={"media": {"type": "document", "id": "med_nosuchmedia1"}},
        ),
        422,
    )
    with_media = _ok(
        manager.patch(
            f"/api/accounts/{a}/quick-replies/{reply['id']}",
            json={
                "media": {"type": "document", "id": upload["id"], "filename": "menu.pdf"},
                "body": "Menu for {{contact.name}}",
            },
        )
    )
    assert with_media["variables"] == []
    doc = _ok(send(CEM), 202)
    content = _ok(agent.get(f"/api/accounts/{a}/messages/{doc['id']}"))["content"]
    assert content["type"] == "document"
    assert content["document"]["caption"] == "Menu for Cem"
    assert content["document"]["id"] == upload["id"]
    audit = _ok(world.admin.get("/api/audit", params={"limit": 200}))["items"]
    actions = {(e["action"], e["target"]) for e in audit}
    assert {
        ("quick_reply.create", f"quick_reply:{reply['id']}"),
        ("quick_reply.update", f"quick_reply:{reply['id']}"),
    } <= actions
