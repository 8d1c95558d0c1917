"""The engine registry: every engine the appliance knows, described in one place.

Each engine is one ``EngineSpec``: its name (an account's ``engine``), how its
``engine_settings`` are validated and stored, a factory building the ``Engine``, and
its capabilities. The rest of the appliance asks the registry instead of naming an
engine: the API validates account settings and documents the ``engine`` enum from it,
the worker builds engines with it, routes check capabilities (``inbound_injection``
for the sandbox routes, ...).

This module is imported by the API process, so it imports no engine at module level:
settings models and factories are imported inside the functions that use them (the
API never loads neonize, the Graph client or an engine's runtime code). Adding an
engine is one ``EngineSpec`` in ``ENGINES`` (and its package).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import account_session_dir

if TYPE_CHECKING:
    from pydantic import BaseModel

    from appliance.config import Settings
    from appliance.crypto import DataCipher
    from appliance.db.database import Database
    from appliance.engines.base import Engine, EngineHost


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; tests/unit/test_engine_contract.py checks each claim."""

    # Sends image/document/audio/video messages (uploaded media or links).
    media_upload: bool = False
    # Links by a code typed on the phone (``pair_phone``).
    pairing_code: bool = False
    # Links by scanning a QR code (``qr_code``, ``qr_png``, ``qr_svg``).
    qr: bool = False
    # Sends ``template`` messages.
    templates: bool = False
    # A simulated server: inbound messages injected by API/CLI, load mode
    # (``poke_inbox``, ``start_load``), the ``/sandbox/...`` routes.
    inbound_injection: bool = False
    # Outbound media reaches ``send()`` as a stored file (``OutboundMessage.media_path``),
    # links fetched by the worker; otherwise the engine handles ids and links itself.
    needs_media_files: bool = False
    # Fetches inbound media (the account's ``download_media`` setting applies).
    download_media: bool = False
    # Keeps a session directory under ``DATA_DIR/sessions/<account>`` (removed on logout
    # and account deletion).
    session_files: bool = False
    # ``engine_settings.base_url`` receives the stored secrets: moving it needs the admin
    # role and the secrets entered again.
    secret_endpoint: bool = False
    # Receives Meta's webhook posts at ``/engines/<name>/<account>/webhook``.
    meta_webhook: bool = False
    # Blocks and unblocks contacts at WhatsApp (``set_blocked``); the contacts routes
    # refuse with a 4xx naming the engine otherwise.
    block_contacts: bool = False
    # Actions that reach WhatsApp (``Engine.perform``; appliance/messaging/actions.py
    # ``ACTION_TYPES``); the routes refuse the others with a 409 naming the engine.
    actions: frozenset[str] = frozenset()
    # Sends ``interactive`` messages (reply buttons, lists); the send route refuses them
    # with a 409 naming the engine otherwise.
    interactive_messages: bool = False


@dataclass(frozen=True)
class EngineContext:
    """What a factory may use besides the account: given by the worker."""

    db: Database
    settings: Settings
    cipher: DataCipher | None


# An engine class with its dependencies bound: what every engine's constructor takes
# (account id, stored settings, engine state, host), the rest given by its factory.
Constructor = Callable[[str, dict[str, Any], dict[str, Any], "EngineHost"], "Engine"]
# Given the worker's context and the account id: the engine's constructor (the factory
# imports the engine's code).
Factory = Callable[[EngineContext, str], Constructor]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    summary: str
    capabilities: Capabilities
    # ``module:Class`` of the pydantic model of ``engine_settings`` (imported on use).
    settings_model_path: str
    # Engine factory: imports the engine's code when called.
    factory: Factory
    # Validated settings in their stored form (secrets encrypted); raises
    # ``pydantic.ValidationError`` or ``ValueError`` for bad input.
    store_settings: Callable[[dict[str, Any], DataCipher], dict[str, Any]] | None = None

    def settings_model(self) -> type[BaseModel]:
        model: type[BaseModel] = _load(self.settings_model_path)
        return model

    def validate_settings(self, settings: dict[str, Any], cipher: DataCipher) -> dict[str, Any]:
        """The settings to store: validated by the engine's settings model."""
        if self.store_settings is not None:
            return self.store_settings(settings, cipher)
        return self.settings_model().model_validate(settings).model_dump()

    def create(
        self,
        account_id: str,
        engine_settings: dict[str, Any],
        engine_state: dict[str, Any],
        host: EngineHost,
        context: EngineContext,
    ) -> Engine:
        construct = self.factory(context, account_id)
        return construct(account_id, engine_settings, engine_state, host)


def _load(path: str) -> Any:
    """``module:attribute``, imported on use."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def session_dir(data_dir: Path, account_id: str) -> Path:
    """An account's session directory (engines with ``session_files``)."""
    return account_session_dir(data_dir / "sessions", account_id)


# -- the engines ----------------------------------------------------------------------


def _sandbox(context: EngineContext, account_id: str) -> Constructor:
    from appliance.engines.sandbox import SandboxEngine

    return partial(SandboxEngine, db=context.db)


def _web(context: EngineContext, account_id: str) -> Constructor:
    from appliance.engines.web.engine import WebEngine

    factory_path = context.settings.web_client_factory  # WEB_CLIENT_FACTORY: tests only
    return partial(
        WebEngine,
        session_root=context.settings.sessions_dir,
        db=context.db,
        client_factory=_load(factory_path) if factory_path else None,
        history_map_nice=context.settings.history_map_nice,
    )


def _cloud(context: EngineContext, account_id: str) -> Constructor:
    from appliance.engines.cloud.engine import CloudEngine
    from appliance.messaging.media import MediaRecord, open_media

    if context.cipher is None:
        raise ValueError("the cloud engine needs the data key; none was given")
    db, settings = context.db, context.settings

    async def media(media_id: str) -> tuple[MediaRecord, Path]:
        return await open_media(db, settings, account_id, media_id)

    return partial(
        CloudEngine,
        db=db,
        cipher=context.cipher,
        open_media=media,
        media_max_bytes=settings.media_max_bytes,
        allowed_networks=settings.allowed_private_networks,
    )


def _cloud_store_settings(settings: dict[str, Any], cipher: DataCipher) -> dict[str, Any]:
    from appliance.engines.cloud.settings import store_settings

    # Secrets are stored encrypted with the data key and shown masked.
    return store_settings(settings, cipher)


_ALL_ACTIONS = frozenset(
    {"read", "archive", "unarchive", "pin", "unpin", "mute", "unmute", "presence", "revoke", "edit"}
)

ENGINES: Mapping[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            name="sandbox",
            summary="a simulated WhatsApp inside the worker (tests and try-outs)",
            capabilities=Capabilities(
                media_upload=True,
                templates=True,
                inbound_injection=True,
                block_contacts=True,
                actions=_ALL_ACTIONS,
                interactive_messages=True,
            ),
            settings_model_path="appliance.messaging.models:SandboxSettings",
            factory=_sandbox,
        ),
        EngineSpec(
            name="web",
            summary="WhatsApp Web multi-device (neonize), linked by QR or pairing code",
            capabilities=Capabilities(
                media_upload=True,
                pairing_code=True,
                qr=True,
                needs_media_files=True,
                download_media=True,
                session_files=True,
                block_contacts=True,
                actions=_ALL_ACTIONS,
            ),
            settings_model_path="appliance.engines.web.settings:WebSettings",
            factory=_web,
        ),
        EngineSpec(
            name="cloud",
            summary="the official WhatsApp Business Cloud API (Graph API)",
            capabilities=Capabilities(
                media_upload=True,
                templates=True,
                download_media=True,
                secret_endpoint=True,
                meta_webhook=True,
                # The Cloud API keeps no chat list: no archive, pin, mute; no revoke or
                # edit of sent messages.
                actions=frozenset({"read", "presence"}),
                interactive_messages=True,
            ),
            settings_model_path="appliance.engines.cloud.settings:CloudSettings",
            factory=_cloud,
            store_settings=_cloud_store_settings,
        ),
    )
}

DEFAULT_ENGINE = "sandbox"


def engine_names() -> tuple[str, ...]:
    return tuple(ENGINES)


def get(name: str) -> EngineSpec | None:
    """The engine called ``name``; None when this version has no such engine."""
    return ENGINES.get(name)


def spec_of(name: str) -> EngineSpec:
    """The engine of a stored account (its name was validated when it was stored)."""
    spec = ENGINES.get(name)
    if spec is None:
        raise ValueError(f"engine {name!r} is not available in this version")
    return spec


def capabilities(name: str) -> Capabilities:
    """An engine's capabilities; none for a name this version does not know."""
    spec = ENGINES.get(name)
    return spec.capabilities if spec is not None else Capabilities()
