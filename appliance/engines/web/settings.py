"""The web engine's settings (``engine_settings`` of a ``web`` account) and its error.

Kept apart from the engine so the API can validate settings (``WebSettings``) without
importing the engine's connection code.
"""

from __future__ import annotations

from pydantic import Field

from appliance.schemas_base import Strict


class WebSettings(Strict):
    """engine_settings of a ``web`` account."""

    pairing_timeout_s: int = Field(default=300, ge=30, le=3600, description="QR/code wait")
    watchdog_idle_s: int = Field(
        default=300, ge=30, le=86_400, description="No traffic this long: probe the connection"
    )
    probe_timeout_s: int = Field(default=20, ge=1, le=120)
    reconnect_grace_s: int = Field(
        default=15, ge=0, le=300, description="Wait for whatsmeow's own reconnect first"
    )
    download_media: bool | None = Field(
        default=None, description="Override the account's download_media setting"
    )
    show_push_notification: bool = Field(default=True, description="Pairing code: notify the phone")
    chat_settings_poll_s: float = Field(
        default=30,
        ge=0,
        le=3600,
        description="Read archive/pin/mute made on the phone this often (0: never)",
    )
    chat_settings_chats: int = Field(
        default=300, ge=1, le=5000, description="How many of the newest chats are read"
    )


class WebEngineError(RuntimeError):
    """The web engine (neonize or its Go library) failed; the account goes ``failed``."""
