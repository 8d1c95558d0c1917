"""What the phone shows (issue 12): a chat's group details, profile pictures, asking
for more history. See runbook/messaging.md, "History sync" and "Names, groups and
profile pictures"."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from quart import Blueprint, Response, current_app

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.openapi import documented, responds
from appliance.api.schemas import Strict
from appliance.api.state import db as _db
from appliance.api.state import state_of
from appliance.api.validation import query
from appliance.api.worker_rpc import call
from appliance.auth.permissions import Permission
from appliance.errors import NotFound, Unprocessable
from appliance.ipc import protocol
from appliance.messaging import history_store, media
from appliance.messaging.models import SyncStatus, recipient_jid

bp = Blueprint("phone_sync", __name__)

MAX_JID_LENGTH = 128
# Why an engine cannot ask WhatsApp for more history.
NO_HISTORY_REQUEST = {
    # neonize 0.5.2 builds the request (neonize.builder.build_history_sync_request), but
    # whatsmeow sends it to the phone only as a peer message (SendRequestExtra.Peer),
    # which neonize's send_message cannot ask for: sent without it, it would be an
    # ordinary message to the account's own number.
    "web": "neonize 0.5.2 can build WhatsApp's on-demand history request but cannot send "
    "it to the phone (no peer-message send); WhatsApp pushes the history once, after "
    "linking (follow account.sync events)",
    "cloud": "the Cloud API has no message history",
    "sandbox": "the sandbox has no history to send",
}


class ParticipantOut(BaseModel):
    jid: str
    role: Literal["member", "admin", "superadmin"]


class ChatInfoOut(BaseModel):
    """A chat as WhatsApp last described it: a group's subject, description and
    members (kept current from the phone's group events)."""

    jid: str
    name: str | None
    description: str | None
    is_group: bool
    archived: bool
    participants: list[ParticipantOut] = Field(description="Groups: members and admins")


class PictureQuery(Strict):
    refresh: bool = Field(
        default=False, description="Ask WhatsApp again even if the stored answer is recent"
    )


def _jid(value: str) -> str:
    if not value or len(value) > MAX_JID_LENGTH or not value.isprintable():
        raise NotFound("no such contact or chat")
    try:
        return recipient_jid(value)
    except ValueError:
        raise NotFound("no such contact or chat: name a +E.164 number or a jid") from None


@bp.get("/api/accounts/<account>/chats/<chat_id>/info")
@requires(Permission.MESSAGES_READ)
@documented(ChatInfoOut, errors=[404], tag="chats")
async def chat_info(account: str, chat_id: str) -> ChatInfoOut:
    """A chat's name and, for groups, its description, members and admins, as the
    phone last reported them (`chat.updated` events follow each change)."""
    await account_for(account)
    details = await history_store.chat_details(_db(), account, _jid(chat_id))
    if details is None:
        raise NotFound("no such chat")
    return ChatInfoOut.model_validate(details)


@bp.get("/api/accounts/<account>/pictures/<jid>")
@requires(Permission.MESSAGES_READ)
@query(PictureQuery)
@responds(
    200,
    "The profile picture, as WhatsApp serves it (JPEG; the stored type otherwise)",
    "image/jpeg",
    "image/png",
    "application/octet-stream",
)
@documented(errors=[404, 409, 503], tag="contacts")
async def profile_picture(account: str, jid: str, query_args: PictureQuery) -> Response:
    """A contact's or group's profile picture (`jid`: a +E.164 number or a jid).

    Fetched from WhatsApp on first request (web engine, connected account), kept in
    the media store and served from there until it is a week old or WhatsApp says it
    changed. "No picture" and "hidden by privacy" answer 404 with that reason, and
    are remembered the same way. Other engines answer 409 naming the engine.
    """
    await account_for(account)
    answer = await call(
        protocol.PictureParams(account_id=account, jid=_jid(jid), refresh=query_args.refresh)
    )
    if answer.state == "none":
        raise NotFound("WhatsApp says this contact or group has no profile picture")
    if answer.state == "hidden":
        raise NotFound("the profile picture is hidden by the contact's privacy settings")
    assert answer.media_id is not None
    record, path = await media.open_media(_db(), state_of().settings, account, answer.media_id)
    body = current_app.response_class.file_body_class(path)
    response = current_app.response_class(body, content_type=record.content_type)
    response.content_length = body.size
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, max-age=3600"
    response.headers["ETag"] = f'"{record.sha256}"'
    return response


@bp.post("/api/accounts/<account>/sync")
@requires(Permission.ACCOUNTS_MANAGE)
@documented(SyncStatus, 202, errors=[404, 422], tag="accounts")
async def request_sync(account: str) -> tuple[SyncStatus, int]:
    """Ask WhatsApp for more history. No engine of this version can (422 naming the
    engine and why): the web engine imports the history WhatsApp pushes after linking,
    with progress in the account status (`sync`) and `account.sync` events."""
    row = await account_for(account)
    engine = row.engine
    reason = NO_HISTORY_REQUEST.get(engine, "it has no history request")
    raise Unprocessable(f"the {engine} engine cannot ask WhatsApp for more history: {reason}")
