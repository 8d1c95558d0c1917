"""The contract every engine keeps, run against each engine of the registry.

- sandbox: as it is (its simulated server is two tables of the database);
- web: neonize replaced at its boundary by ``tests/fakes/fake_whatsapp.py`` (a fake
  WhatsApp server on 127.0.0.1, the client factory the integration tests use);
- cloud: the Graph API replaced by an ``httpx.MockTransport`` and the host, settings and
  webhook envelopes of ``tests/unit/test_cloud_engine.py``.

Each engine is driven as the worker's ``AccountRuntime`` drives it: ``connect`` (linking
first where the engine needs it) then ``on_state("connected")``, ``run_until_closed`` in a
task, ``send``, ``logout`` / ``close``. The checks: it connects and reports its number,
a text send is handed to WhatsApp (which then confirms delivery through the host),
an inbound message reaches ``EngineHost.on_inbound`` and is stored once, logout and
close end the run cleanly, and the capabilities the registry declares are the ones the
engine implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from appliance.config import ENV_PREFIX, Paths, load_settings
from appliance.engines import registry
from appliance.engines.base import ActionError, Engine, EngineAction, OutboundMessage, SendError
from appliance.messaging import store
from appliance.messaging.media import open_media, save_media
from tests.samples import png
from tests.unit.test_cloud_engine import (
    CIPHER,
    GUARD,
    RAW_SETTINGS,
    FakeHost,
    _contacts,
    _envelope,
)

ACCOUNT = "acc1"
PEER = "16505551234"
PEER_JID = f"{PEER}@s.whatsapp.net"
PHONE = "+15550001111"
TIMEOUT_S = 30.0  # every wait is bounded; generous for a loaded machine


class Host(FakeHost):
    """The cloud tests' host (commits inbound messages, records receipts) that also
    records connection states and delivery failures."""

    def __init__(self, db: Any, account_id: str) -> None:
        super().__init__(db, account_id)
        self.states: list[tuple[str, str | None]] = []
        self.failed: list[tuple[str, str]] = []

    async def on_state(self, state: str, *, reason: str | None = None, **_: Any) -> None:
        self.states.append((state, reason))

    async def on_delivery_failed(self, message_id: str, reason: str) -> None:
        self.failed.append((message_id, reason))


async def until(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


# -- one harness per engine: the WhatsApp side ---------------------------------------------


class Harness:
    """What the test does on WhatsApp's side of one engine."""

    name: str
    settings: dict[str, Any] = {}

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        paths = Paths(tmp_path)
        paths.etc.mkdir(parents=True, exist_ok=True)
        paths.env_file.write_text(f"DATA_DIR={tmp_path / 'data'}\n", encoding="utf-8")
        self.app_settings = load_settings(paths, environ={})

    def stored_settings(self) -> dict[str, Any]:
        return registry.spec_of(self.name).validate_settings(self.settings, CIPHER)

    def make(self, db: Any, host: Host) -> Engine:
        raise NotImplementedError

    async def link(self, engine: Engine, host: Host) -> None:
        """Whatever the phone does while ``connect`` waits (nothing by default)."""

    async def handed_over(self, message_id: str) -> bool:
        raise NotImplementedError

    async def confirm_delivery(self, db: Any, message_id: str) -> None:
        """WhatsApp reports the message delivered (the sandbox does it by itself)."""

    async def inbound(self, db: Any, engine: Engine, body: str) -> str:
        """A message written to the account; the id it arrives with."""
        raise NotImplementedError

    async def blocked(self, jid: str) -> bool:
        """Whether WhatsApp has ``jid`` blocked for the account (engines that block)."""
        raise NotImplementedError

    async def acted(self, action: EngineAction) -> Any:
        """What WhatsApp's side recorded of the action (falsy: nothing)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SandboxHarness(Harness):
    name = "sandbox"
    settings = {"pairing_delay_ms": 0, "delivered_after_ms": 0, "read_after_ms": 0, "phone": PHONE}

    def make(self, db: Any, host: Host) -> Engine:
        from appliance.engines.sandbox import SandboxEngine

        self.db = db
        return SandboxEngine(ACCOUNT, self.stored_settings(), {}, host, db=db)

    async def handed_over(self, message_id: str) -> bool:
        count = await self.db.scalar(
            "SELECT count(*) FROM sandbox_server_sent WHERE account_id = ? AND message_id = ?",
            (ACCOUNT, message_id),
        )
        return bool(count)

    async def blocked(self, jid: str) -> bool:
        count = await self.db.scalar(
            "SELECT count(*) FROM sandbox_server_blocked WHERE account_id = ? AND jid = ?",
            (ACCOUNT, jid),
        )
        return bool(count)

    async def acted(self, action: EngineAction) -> Any:
        return await self.db.scalar(
            "SELECT type FROM sandbox_server_actions WHERE account_id = ? AND key = ?",
            (ACCOUNT, action.send_id or action.id),
        )

    async def inbound(self, db: Any, engine: Engine, body: str) -> str:
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO sandbox_server_inbox (account_id, message_id, from_jid, content, "
                "injected_at) VALUES (?, 'IN1', ?, ?, ?)",
                (
                    ACCOUNT,
                    PEER_JID,
                    orjson.dumps({"type": "text", "text": {"body": body}}).decode(),
                    time.time(),
                ),
            )
        engine.poke_inbox()  # type: ignore[attr-defined]
        return "IN1"


class WebHarness(Harness):
    name = "web"
    settings = {"pairing_timeout_s": 60}

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(tmp_path, monkeypatch)
        fakes = str(Path(__file__).resolve().parents[1] / "fakes")
        monkeypatch.syspath_prepend(fakes)
        from fake_whatsapp import FakeWhatsAppServer, client_factory

        self.client_factory = client_factory
        self.fake = FakeWhatsAppServer().start()
        monkeypatch.setenv("FAKE_WHATSAPP_ADDR", self.fake.address)
        monkeypatch.delenv("APPLIANCE_FAKE_WHATSAPP_ADDR", raising=False)

    def make(self, db: Any, host: Host) -> Engine:
        from appliance.engines.web.engine import WebEngine

        return WebEngine(
            ACCOUNT,
            self.stored_settings(),
            {},
            host,
            session_root=self.tmp_path / "sessions",
            db=db,
            client_factory=self.client_factory,
        )

    async def link(self, engine: Engine, host: Host) -> None:
        await until(lambda: engine.qr_code, "a QR code")  # type: ignore[attr-defined]
        assert engine.qr_png().startswith(b"\x89PNG")  # type: ignore[attr-defined]
        # pairing_code: the method works, and the phone links with the code.
        code = await engine.pair_phone(PHONE)  # type: ignore[attr-defined]
        await asyncio.to_thread(self.fake.enter_pairing_code, ACCOUNT, code)

    async def handed_over(self, message_id: str) -> bool:
        """A send reached the fake since the last time this was asked."""
        count = len(self.fake.sent(ACCOUNT))
        new, self.handed = count > getattr(self, "handed", 0), count
        return new

    async def confirm_delivery(self, db: Any, message_id: str) -> None:
        sent = self.fake.sent(ACCOUNT)[-1]
        self.fake.receipt(ACCOUNT, [sent.id], "delivered")

    async def inbound(self, db: Any, engine: Engine, body: str) -> str:
        return str(self.fake.push_text(ACCOUNT, PEER_JID, body))

    async def blocked(self, jid: str) -> bool:
        return jid in self.fake.blocked(ACCOUNT)

    async def acted(self, action: EngineAction) -> Any:
        if action.type == "presence":
            return [p for p in self.fake.presences(ACCOUNT) if p.chat == action.chat_jid]
        index = {"archive": "archive", "unarchive": "archive", "read": "markChatAsRead"}
        name = index.get(action.type, {"pin": "pin_v1", "unpin": "pin_v1"}.get(action.type))
        name = name or "mute"
        return [
            m
            for p in self.fake.app_state(ACCOUNT)
            for m in p.Mutations
            if list(m.Index) == [name, action.chat_jid]
        ]

    def close(self) -> None:
        self.fake.stop()


class CloudHarness(Harness):
    name = "cloud"
    settings = RAW_SETTINGS

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(tmp_path, monkeypatch)
        self.requests: list[httpx.Request] = []

    def graph(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"display_phone_number": "+1 555-000-1111"})
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"id": f"graph-media-{len(self.requests)}"})
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": PEER, "wa_id": PEER}],
                "messages": [{"id": f"wamid.OUT{len(self.requests)}"}],
            },
        )

    def make(self, db: Any, host: Host) -> Engine:
        from appliance.engines.cloud.engine import CloudEngine

        return CloudEngine(
            ACCOUNT,
            self.stored_settings(),
            {},
            host,
            db=db,
            cipher=CIPHER,
            open_media=lambda media_id: open_media(db, self.app_settings, ACCOUNT, media_id),
            transport=httpx.MockTransport(self.graph),
            **GUARD,
        )

    def _sent(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.content) for r in self.requests if r.url.path.endswith("/messages")]

    async def handed_over(self, message_id: str) -> bool:
        return any(s.get("biz_opaque_callback_data") == message_id for s in self._sent())

    async def acted(self, action: EngineAction) -> Any:
        # The Graph bodies: a read receipt, with the typing indicator for presence.
        read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1"}
        if action.type == "presence":
            read["typing_indicator"] = {"type": "text"}
        return [s for s in self._sent() if s == read]

    async def _post(self, db: Any, value: dict[str, Any]) -> None:
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO cloud_inbox (account_id, payload, received_at) VALUES (?, ?, 0)",
                (ACCOUNT, orjson.dumps(_envelope(value))),
            )

    async def confirm_delivery(self, db: Any, message_id: str) -> None:
        wamid = f"wamid.OUT{len(self.requests)}"  # the id Graph gave the last send
        await self._post(db, {"statuses": [{"id": wamid, "status": "delivered", "timestamp": "1"}]})

    async def inbound(self, db: Any, engine: Engine, body: str) -> str:
        message = {"from": PEER, "id": "wamid.IN1", "timestamp": "3", "type": "text"}
        await self._post(
            db, {"contacts": _contacts(), "messages": [{**message, "text": {"body": body}}]}
        )
        engine.poke_inbox()  # type: ignore[attr-defined]
        return "wamid.IN1"


HARNESSES: dict[str, type[Harness]] = {
    h.name: h for h in (SandboxHarness, WebHarness, CloudHarness)
}


def test_every_registered_engine_has_a_contract_harness() -> None:
    assert set(HARNESSES) == set(registry.engine_names())


@pytest.fixture(params=registry.engine_names())
def harness(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    made = HARNESSES[request.param](tmp_path, monkeypatch)
    yield made
    made.close()


def run(open_db: Any, db_path: Path, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await asyncio.wait_for(body(db), TIMEOUT_S * 3)

    asyncio.run(main())


async def setup_account(db: Any, harness: Harness, *message_ids: str) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=ACCOUNT,
            name=ACCOUNT,
            engine=harness.name,
            engine_settings=harness.stored_settings(),
            settings={},
            now=1.0,
        )
        for message_id in message_ids:
            await store.insert_outbound(
                conn,
                account_id=ACCOUNT,
                message_id=message_id,
                chat_jid=PEER_JID,
                type_="text",
                body="hi",
                content={"type": "text", "text": {"body": "hi"}},
                reply_to=None,
                media_id=None,
                client_key=None,
                now=1.0,
            )


async def connect(harness: Harness, engine: Engine, host: Host) -> asyncio.Task[str]:
    """What AccountRuntime does: connect (linking first), report connected, serve."""
    connecting = asyncio.create_task(engine.connect())
    await harness.link(engine, host)
    phone = await asyncio.wait_for(connecting, TIMEOUT_S)
    assert phone == PHONE, phone
    await host.on_state("connected", reason=None)
    return asyncio.create_task(engine.run_until_closed())


def text(message_id: str, body: str = "hi") -> OutboundMessage:
    return OutboundMessage(
        account_id=ACCOUNT,
        id=message_id,
        to_jid=PEER_JID,
        type="text",
        content={"type": "text", "text": {"body": body}},
    )


# -- the contract -------------------------------------------------------------------------


def test_connect_send_receive_close(harness: Harness, open_db: Any, db_path: Path) -> None:
    async def body(db: Any) -> None:
        await setup_account(db, harness, "msg_1")
        host = Host(db, ACCOUNT)
        engine = harness.make(db, host)
        running = await connect(harness, engine, host)
        caps = registry.capabilities(harness.name)
        # Before connected, an engine reports only connecting/pairing; linking engines pair.
        before = [s for s, _ in host.states[:-1]]
        assert set(before) <= {"connecting", "pairing"}
        assert host.states[-1][0] == "connected"
        if caps.qr or caps.pairing_code:
            assert "pairing" in before

        # A text send is handed to WhatsApp; WhatsApp's delivery receipt reaches the host.
        await engine.send(text("msg_1"))
        assert await harness.handed_over("msg_1")
        await harness.confirm_delivery(db, "msg_1")
        await until(lambda: ("msg_1", "delivered") in host.receipts, "the delivered receipt")

        # An inbound message reaches on_inbound and is stored (once).
        message_id = await harness.inbound(db, engine, "hello there")
        await until(lambda: any(m.id == message_id for m in host.inbound), "the inbound message")
        (got,) = [m for m in host.inbound if m.id == message_id]
        assert got.chat_jid == PEER_JID and got.type == "text" and got.body == "hello there"
        row = await store.message_row(db, ACCOUNT, message_id)
        assert row is not None and row["direction"] == "in"

        # close ends run_until_closed cleanly.
        await engine.close()
        assert isinstance(await asyncio.wait_for(running, TIMEOUT_S), str)

    run(open_db, db_path, body)


def test_logout_ends_the_session(harness: Harness, open_db: Any, db_path: Path) -> None:
    async def body(db: Any) -> None:
        await setup_account(db, harness)
        host = Host(db, ACCOUNT)
        engine = harness.make(db, host)
        running = await connect(harness, engine, host)
        caps = registry.capabilities(harness.name)
        session = registry.session_dir(harness.tmp_path, ACCOUNT)
        assert session.exists() is caps.session_files
        await engine.logout()
        with contextlib.suppress(Exception):  # a logged-out run may end with LoggedOut
            await asyncio.wait_for(running, TIMEOUT_S)
        assert running.done()
        if caps.session_files:  # the local credentials are gone
            assert not (session / "session.db").exists()
        await engine.close()  # closing after logout is harmless

    run(open_db, db_path, body)


def test_declared_capabilities_are_implemented(
    harness: Harness, open_db: Any, db_path: Path
) -> None:
    """Each capability the registry declares matches what the engine implements."""
    caps = registry.capabilities(harness.name)
    spec = registry.spec_of(harness.name)
    fields = spec.settings_model().model_fields
    assert ("download_media" in fields) is caps.download_media
    assert ("base_url" in fields) is caps.secret_endpoint

    async def body(db: Any) -> None:
        await setup_account(db, harness, "tpl_1", "img_1")
        host = Host(db, ACCOUNT)
        engine = harness.make(db, host)
        kind = type(engine)
        assert kind.needs_media_files is caps.needs_media_files
        assert callable(getattr(kind, "pair_phone", None)) is caps.pairing_code
        assert callable(getattr(kind, "qr_png", None)) is caps.qr
        assert callable(getattr(kind, "start_load", None)) is caps.inbound_injection
        assert callable(getattr(kind, "process_inbox", None)) is caps.meta_webhook
        assert callable(getattr(kind, "set_blocked", None)) is caps.block_contacts
        running = await connect(harness, engine, host)  # pairing code / QR checked here
        if caps.block_contacts:  # WhatsApp's side records the block, then the unblock
            await engine.set_blocked(PEER_JID, True)  # type: ignore[attr-defined]
            assert await harness.blocked(PEER_JID)
            await engine.set_blocked(PEER_JID, False)  # type: ignore[attr-defined]
            assert not await harness.blocked(PEER_JID)
        template = OutboundMessage(
            account_id=ACCOUNT,
            id="tpl_1",
            to_jid=PEER_JID,
            type="template",
            content={
                "type": "template",
                "template": {"name": "hello_world", "language": {"code": "en_US"}},
            },
        )
        if caps.templates:
            await engine.send(template)
            assert await harness.handed_over("tpl_1")
        else:
            with pytest.raises(SendError) as refused:
                await engine.send(template)
            assert refused.value.permanent
        # media_upload: an uploaded image (our media id) is sent; as a stored file where
        # the engine needs_media_files (the worker hands it the path).
        record = await save_media(db, harness.app_settings, ACCOUNT, png())
        _, path = await open_media(db, harness.app_settings, ACCOUNT, record.id)
        image = OutboundMessage(
            account_id=ACCOUNT,
            id="img_1",
            to_jid=PEER_JID,
            type="image",
            content={"type": "image", "image": {"id": record.id, "caption": "a picture"}},
            media_path=str(path) if caps.needs_media_files else None,
            media_type=record.content_type if caps.needs_media_files else None,
        )
        if caps.media_upload:
            await engine.send(image)
            assert await harness.handed_over("img_1")
        else:
            with pytest.raises(SendError):
                await engine.send(image)
        await engine.close()
        await asyncio.wait_for(running, TIMEOUT_S)

    run(open_db, db_path, body)


def test_declared_actions_reach_whatsapp(harness: Harness, open_db: Any, db_path: Path) -> None:
    """Each chat action the registry declares for an engine reaches WhatsApp's side; an
    action it does not declare is refused for good. (Revoke and edit need a message
    WhatsApp accepted: tests/integration/test_engine_actions.py and
    tests/unit/test_engine_actions.py.)"""
    claimed = registry.capabilities(harness.name).actions
    params = {
        "message_ids": ["wamid.IN1"],
        "until": time.time() + 3600,
        "state": "composing",
        "last_message_at": 3.0,
    }

    async def body(db: Any) -> None:
        await setup_account(db, harness)
        host = Host(db, ACCOUNT)
        engine = harness.make(db, host)
        running = await connect(harness, engine, host)
        try:
            await _perform_each(engine, harness, claimed, params)
        finally:
            await engine.close()
        await asyncio.wait_for(running, TIMEOUT_S)

    run(open_db, db_path, body)


async def _perform_each(
    engine: Engine, harness: Harness, claimed: frozenset[str], params: dict[str, Any]
) -> None:
    for n, type_ in enumerate(
        ("read", "archive", "unarchive", "pin", "unpin", "mute", "unmute", "presence")
    ):
        action = EngineAction(
            id=f"act_{n}", account_id=ACCOUNT, type=type_, chat_jid=PEER_JID, params=params
        )
        if type_ in claimed:
            await engine.perform(action)
            assert await harness.acted(action), type_
        else:
            with pytest.raises(ActionError) as refused:
                await engine.perform(action)
            assert refused.value.permanent


# -- the registry -------------------------------------------------------------------------


@pytest.mark.parametrize("name", registry.engine_names())
def test_the_factory_builds_the_engine(
    name: str, open_db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the worker's make_engine does: the registry's factory, given the context."""
    expected = {
        "sandbox": "appliance.engines.sandbox.SandboxEngine",
        "web": "appliance.engines.web.engine.WebEngine",
        "cloud": "appliance.engines.cloud.engine.CloudEngine",
    }[name]
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "fakes"))
    settings = load_settings(
        Paths(tmp_path),
        environ={
            f"{ENV_PREFIX}WEB_CLIENT_FACTORY": "fake_whatsapp:client_factory",
            f"{ENV_PREFIX}ENABLE_TEST_ROUTES": "true",
        },
    )
    spec = registry.spec_of(name)
    stored = spec.validate_settings(HARNESSES[name].settings, CIPHER)

    async def main() -> None:
        async with open_db(tmp_path / "appliance.db") as db:
            host = Host(db, ACCOUNT)
            context = registry.EngineContext(db=db, settings=settings, cipher=CIPHER)
            engine = spec.create(ACCOUNT, stored, {}, host, context)
            kind = type(engine)
            assert f"{kind.__module__}.{kind.__name__}" == expected
            if registry.capabilities(name).session_files:
                assert engine.session_dir == registry.session_dir(  # type: ignore[attr-defined]
                    settings.data_dir, ACCOUNT
                )
                assert engine.connection.client_factory.__module__ == "fake_whatsapp"  # type: ignore[attr-defined]
            if name == "cloud":
                bare = registry.EngineContext(db=db, settings=settings, cipher=None)
                with pytest.raises(ValueError, match="data key"):
                    spec.create(ACCOUNT, stored, {}, host, bare)
            await engine.close()

    asyncio.run(main())


def test_unknown_engines_are_not_available() -> None:
    assert registry.get("telegram") is None
    assert registry.capabilities("telegram") == registry.Capabilities()
    with pytest.raises(ValueError, match="not available"):
        registry.spec_of("telegram")


def test_the_api_side_of_the_registry_loads_no_engine() -> None:
    """Validating settings and reading capabilities imports no engine implementation
    (the API process uses the registry; it must not load neonize or engine code)."""
    import subprocess

    code = (
        "import sys\n"
        "from appliance.engines import registry\n"
        "from appliance.crypto import DataCipher\n"
        "import appliance.messaging.models\n"
        f"RAW_SETTINGS = {RAW_SETTINGS!r}\n"
        "for name in registry.engine_names():\n"
        "    registry.capabilities(name)\n"
        "    registry.spec_of(name).settings_model()\n"
        "registry.spec_of('sandbox').validate_settings({}, DataCipher(b'k'))\n"
        "registry.spec_of('web').validate_settings({}, DataCipher(b'k'))\n"
        "registry.spec_of('cloud').validate_settings(RAW_SETTINGS, DataCipher(b'k'))\n"
        "bad = [m for m in ('neonize', 'appliance.engines.sandbox',\n"
        "    'appliance.engines.web.engine', 'appliance.engines.web.connection',\n"
        "    'appliance.engines.cloud.engine', 'appliance.engines.cloud.graph')\n"
        "    if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"loaded: {done.stdout}"


def test_the_spec_lists_the_registered_engines(tmp_path: Path) -> None:
    from tests.unit.test_openapi import _spec

    schema = _spec(tmp_path)["components"]["schemas"]["AccountCreateIn"]["properties"]["engine"]
    assert schema["enum"] == list(registry.engine_names())
    assert schema["default"] == registry.DEFAULT_ENGINE
