"""Media of the web engine: downloading inbound media, uploading outbound media.

Inbound: the bytes are fetched through the client (or an injected downloader); a
failure keeps the message and records why as ``download_error`` in its content part.
Outbound: neonize uploads bytes to WhatsApp's media servers and builds the message;
it cannot send by link or by our media id, so the worker resolves media to a stored
file first (``needs_media_files``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.engines.base import InboundMessage, OutboundMessage, SendError
from appliance.engines.web.connection import GO_GATE
from appliance.engines.web.protobuf import describe, send_error

MediaDownloader = Callable[[Any, Any], Awaitable[bytes]]  # (client, message proto) -> bytes
STICKER_SIZE = 512  # WhatsApp's stickers are 512x512


def sticker_square(data: bytes) -> bytes:
    """A still image (PNG, JPEG, ...) as WhatsApp's sticker size, as PNG: scaled (up or
    down) to fit 512x512, centred on a transparent 512x512 square. neonize then makes it
    a WebP; by itself it would only pad the image to a square of its own size."""
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as opened:
        image = opened.convert("RGBA")
    scale = STICKER_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    square = Image.new("RGBA", (STICKER_SIZE, STICKER_SIZE), (0, 0, 0, 0))
    square.paste(image, ((STICKER_SIZE - size[0]) // 2, (STICKER_SIZE - size[1]) // 2), image)
    out = BytesIO()
    square.save(out, format="PNG")
    return out.getvalue()


async def with_media(
    inbound: InboundMessage, message: Any, client: Any, downloader: MediaDownloader | None
) -> InboundMessage:
    """``inbound`` with its media downloaded; on failure kept, with the reason recorded."""
    part = inbound.content[inbound.type]
    try:
        if downloader is not None:
            data = await downloader(client, message)
        else:
            async with GO_GATE.shared():
                data = await client.download_any(message)
    except Exception as exc:
        part["download_error"] = describe(exc)
        return inbound
    mime = part.get("mime_type") or "application/octet-stream"
    return dataclasses.replace(inbound, media=(mime, data))


async def build_media(client: Any, message: OutboundMessage, context: Any) -> Any:
    """Upload the message's stored file and build the media message (with ``context``)."""
    part = message.content.media
    if part is None or not message.media_path:
        raise SendError(
            "media must be resolved to a stored file before the web engine sends it",
            permanent=True,
        )
    try:
        data = await asyncio.to_thread(Path(message.media_path).read_bytes)
    except OSError as exc:
        raise SendError(f"media file unreadable: {exc}", permanent=True) from exc
    caption = part.caption
    passthrough = message.media_type == "image/webp"
    if message.type == "sticker" and not passthrough:
        try:
            data = await asyncio.to_thread(sticker_square, data)
        except Exception as exc:  # Pillow cannot read it: no sticker can be made of it
            raise SendError(
                f"a sticker needs a WebP, PNG or JPEG image: {describe(exc)}", permanent=True
            ) from exc
    try:
        async with GO_GATE.shared():  # uploads to WhatsApp's media servers
            if message.type == "image":
                built = await client.build_image_message(data, caption=caption)
            elif message.type == "video":
                built = await client.build_video_message(data, caption=caption)
            elif message.type == "audio":
                built = await client.build_audio_message(data)
            elif message.type == "sticker":
                # a WebP goes as is; neonize makes a WebP of the 512x512 PNG made above.
                built = await client.build_sticker_message(data, passthrough=passthrough)
            else:
                built = await client.build_document_message(
                    data,
                    caption=caption,
                    filename=part.filename or "file",
                    mimetype=message.media_type,
                )
    except Exception as exc:
        raise send_error(exc) from exc
    if context is not None:
        getattr(built, f"{message.type}Message").contextInfo.MergeFrom(context)
    return built
