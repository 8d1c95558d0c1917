"""Media in the panel's forms (a quick reply's, an auto-reply's ``reply`` action, a
scheduled message's): the file chosen in the form, stored
through the media store as ``POST /api/accounts/{id}/media`` stores it (the same
MEDIA_MAX_BYTES limit, the same types judged from the bytes, the same messages), or the
one an earlier try of the same form uploaded (``media_id``, so a form shown again for
a wrong field does not lose its file). What the quick reply then keeps is the API's
``QuickReplyMedia`` (``{"type", "id", "filename"}``), checked by the API's own function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from appliance.api.access import principal
from appliance.api.panel.api_text import api_text
from appliance.api.panel.i18n import _
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.auth.permissions import Permission
from appliance.errors import N_, ClientError, Forbidden, NotFound
from appliance.inbox.models import QuickReplyMedia
from appliance.inbox.quick_replies import BUILTINS
from appliance.messaging import media

FILE_FIELD = "media_file"
# The media kinds as people read them (QuickReplyMedia.type).
KIND_NAMES = {
    "image": N_("Image"),
    "document": N_("Document"),
    "video": N_("Video"),
    "audio": N_("Audio"),
}


@dataclass(frozen=True)
class Chosen:
    """The form's media: the stored file (or None), or why it was refused (and the
    status to answer)."""

    record: media.MediaRecord | None = None
    error: str | None = None
    status: int = 400


def reply_media(record: media.MediaRecord) -> dict[str, Any]:
    """``QuickReplyMedia``'s fields for a stored file: its kind as the upload judged it;
    a document keeps its name (what the receiver sees), as the composer's attachments."""
    part: dict[str, Any] = {"type": record.kind, "id": record.id}
    if record.kind == "document" and record.filename:
        part["filename"] = record.filename[:255]
    return part


async def chosen_media(account: str, form: Any, files: Any, prefix: str = "") -> Chosen:
    """The file the form carries (stored now), else the one kept from an earlier try.
    ``prefix`` names the fields of one of several media fields in a form (an auto-reply's
    action rows: ``a0_media_file``, ``a0_media_id``)."""
    upload = files.get(prefix + FILE_FIELD)
    if upload is not None and upload.filename:  # no file chosen: an empty part
        if not principal().can(Permission.MESSAGES_SEND):  # the API's upload needs it
            raise Forbidden("uploading media needs messages.send")
        try:
            record = await media.save_media(
                _db(),
                state_of().settings,
                account,
                upload.stream.read(),
                filename=upload.filename,
                source_url=None,
            )
        except ClientError as exc:  # too large, a type WhatsApp cannot carry, empty
            return Chosen(error=api_text(exc.message), status=exc.http_status)
        return Chosen(record)
    kept = str(form.get(prefix + "media_id", "")).strip()[:100]
    if kept:
        try:
            return Chosen(await media.get_media(_db(), account, kept))
        except NotFound:
            return Chosen(error=_("The file uploaded before is gone: choose it again."))
    return Chosen()


def media_view(
    account: str, item: QuickReplyMedia | Any | None, kind: str | None = None
) -> dict[str, Any] | None:
    """How media is shown (a quick reply's, an auto-reply's, a schedule's message's:
    anything with ``id``, ``link``, ``filename`` and a ``type``, or ``kind`` given): an
    uploaded image as a thumbnail from the appliance's own media store, others by kind
    and name; a link as text (never loaded into the page: CSP and privacy)."""
    if item is None:
        return None
    kind = kind or item.type
    url = None
    if item.id is not None:
        url = f"/api/accounts/{quote(account, safe='')}/media/{quote(item.id, safe='')}"
    return {
        "type": kind,
        "kind": _(KIND_NAMES.get(kind, kind)),
        "url": url,
        "link": item.link,
        "filename": item.filename,
        "thumbnail": url if kind == "image" else None,
    }


def kept_values(record: media.MediaRecord | None) -> dict[str, Any]:
    """The form's hidden fields that keep an uploaded file across a refused try."""
    if record is None:
        return {}
    return {"media_id": record.id, "media_type": record.kind, "media_name": record.filename or ""}


def upload_context() -> dict[str, Any]:
    """What the forms with a media field show of media: the upload limit, how media is shown,
    the built-in variables."""
    limit = state_of().settings.media_max_bytes
    return {
        "media_max_bytes": limit,
        "media_max_mb": round(limit / (1024 * 1024), 1),
        "media_view": media_view,
        "builtins": BUILTINS,
    }
