"""Linking a phone to a ``web`` account: the QR code and the pairing code.

whatsmeow shows a QR code (refreshed every so often) until the phone scans it; each
code is reported to the host as a ``pairing`` state with its number. Instead of
scanning, the phone can enter a pairing code, which WhatsApp issues for the phone's
number while the account waits to be linked.
"""

from __future__ import annotations

import io
from typing import Any, Literal

from appliance.engines.base import EngineHost
from appliance.engines.web.connection import GO_GATE, Connection
from appliance.engines.web.protobuf import describe
from appliance.engines.web.settings import WebEngineError


def pairing_digits(phone: str) -> str:
    """The digits of an E.164 number; ValueError for anything else."""
    digits = phone.strip().lstrip("+")
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise ValueError("phone must be an E.164 number such as +905551112233")
    return digits


def render_qr(code: str, kind: Literal["png", "svg"], scale: int) -> bytes:
    """The QR code as an image (segno: neonize depends on it; pure Python)."""
    import segno

    out = io.BytesIO()
    segno.make_qr(code, error="l").save(out, kind=kind, scale=scale, border=4)
    return out.getvalue()


class Linking:
    """The account's current QR code and pairing requests."""

    def __init__(self, host: EngineHost) -> None:
        self.host = host
        self.qr_code: str | None = None
        self.qr_refreshes = 0

    async def on_qr(self, code: str) -> None:
        self.qr_code = code
        self.qr_refreshes += 1
        await self.host.on_state("pairing", reason=f"scan the QR code (code {self.qr_refreshes})")

    async def on_pair_status(self, event: Any) -> None:
        if event.Error:
            await self.host.on_state("pairing", reason=f"linking failed: {event.Error}")

    async def pair_phone(self, connection: Connection, phone: str, *, notify: bool) -> str:
        """A pairing code for ``phone`` (E.164); only while the account is pairing."""
        digits = pairing_digits(phone)
        client = connection.client
        if client is None or connection.connected.is_set():
            raise WebEngineError("the account is not waiting to be linked: connect it first")
        try:
            async with GO_GATE.shared():
                code = await client.PairPhone(digits, notify)
        except Exception as exc:
            raise WebEngineError(f"could not get a pairing code: {describe(exc)}") from exc
        await self.host.on_state("pairing", reason="enter the pairing code on the phone")
        return str(code)

    def image(self, kind: Literal["png", "svg"], scale: int) -> bytes | None:
        return render_qr(self.qr_code, kind, scale) if self.qr_code else None
