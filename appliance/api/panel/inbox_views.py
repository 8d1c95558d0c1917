"""The inbox: chat list with filters and search, the conversation, the composer and the
side panel (status, assignment, tags, notes).

Every route checks what the matching JSON route checks (permission, account grant,
the chat exists) and calls the same stores. Fragments answer htmx requests; the same
URL without htmx answers the whole page, so links and reloads work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiosqlite
import orjson
from pydantic import ValidationError
from quart import Response, request
from quart_schema import hide

from appliance.api.access import principal, requires
from appliance.api.accounts_access import visible_accounts
from appliance.api.panel import conversation as extras
from appliance.api.panel import i18n
from appliance.api.panel.api_text import api_text, issue_text
from appliance.api.panel.i18n import _
from appliance.api.panel.web import bp, is_htmx, page, see_other
from appliance.api.routes.chats import (
    ChatOut,
    _chat_jid,
    _chat_outs,
    _granted,
    change_conversation,
    existing_chat,
)
from appliance.api.routes.inbox_organize import create_tag_in
from appliance.api.state import db as _db
from appliance.api.validation import issues_from
from appliance.api.worker_rpc import call, poke
from appliance.auth.permissions import Permission
from appliance.errors import N_, ClientError, InvalidInput, IpcError, NotFound
from appliance.inbox import notes_store, quick_replies_store, tags_store
from appliance.inbox import store as inbox_store
from appliance.inbox.models import QuickReplySendIn, TagCreateIn
from appliance.ipc import protocol
from appliance.messaging import queries, sends, store
from appliance.messaging.models import SendMessageIn, content_dict, jid_phone
from appliance.messaging.rows import MessageRow

log = logging.getLogger(__name__)

STATUSES = ("open", "pending", "resolved", "snoozed")
CHAT_PAGE = 50
# The most chats a live refresh of the list re-reads: the pages the user has loaded with
# "More chats" stay (their place in the list with them); beyond it, the first pages.
MAX_CHATS_SHOWN = 500
MESSAGE_PAGE = 60
MAX_TEXT = 4096
# What the chat list says for a last message without text.
KIND_NAMES = {
    "image": N_("Photo"),
    "video": N_("Video"),
    "audio": N_("Voice message"),
    "document": N_("Document"),
    "sticker": N_("Sticker"),
    "location": N_("Location"),
    "reaction": N_("Reaction"),
    "template": N_("Template message"),
}


@dataclass
class Filters:
    """The chat list's filters, from the query string (unknown values are ignored)."""

    account: str | None = None
    who: str = "all"  # all | mine | unassigned
    status: str | None = "open"
    tag: str | None = None
    q: str | None = None
    chat: str | None = None
    cursor: str | None = None  # the chat list's next page (from its "More chats" button)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, args: Any) -> Filters:
        f = cls()
        account = str(args.get("account", "")).strip()
        f.account = account or None
        who = args.get("who", "all")
        f.who = who if who in ("all", "mine", "unassigned") else "all"
        status = args.get("status", "open")
        f.status = status if status in STATUSES else None  # "any" and others: every status
        tag = str(args.get("tag", "")).strip()[:60]
        f.tag = tag or None
        q = str(args.get("q", "")).strip()[:256]
        f.q = q or None
        chat = str(args.get("chat", "")).strip()[:256]
        f.chat = chat or None
        cursor = str(args.get("cursor", "")).strip()[:200]
        f.cursor = cursor or None
        return f

    def query(self, **changes: Any) -> str:
        values = {
            "account": self.account,
            "who": self.who,
            "status": self.status or "any",
            "tag": self.tag,
            "q": self.q,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})


def chat_url(account: str, jid: str) -> str:
    return f"/panel/inbox/{quote(account, safe='')}/{quote(jid, safe='@.')}"


async def _accounts() -> list[Any]:
    return await store.list_account_rows(_db(), visible_accounts())


async def _reader_id() -> int | None:
    return (await inbox_store.actor_of(_db(), principal())).user_id


async def _chat_list(f: Filters, *, limit: int = CHAT_PAGE) -> dict[str, Any]:
    """The chat list of the filters' account (default: the first visible one);
    ``limit``: how many chats (a live refresh asks for as many as the page shows)."""
    accounts = await _accounts()
    ids = [a.id for a in accounts]
    if f.account is None or f.account not in ids:
        f.account = ids[0] if ids else None
    ctx: dict[str, Any] = {
        "f": f,
        "accounts": accounts,
        "chats": [],
        "tags": [],
        "results": [],
        "more_url": None,
        "links": {},
    }
    if f.account is None:
        return ctx
    account = f.account
    await _granted(account)
    db = _db()
    ctx["tags"], _next = await tags_store.list_tags(db, account, cursor=None, limit=200)
    if f.q:
        found, _next = await queries.search_messages(db, [account], f.q, limit=CHAT_PAGE)
        ctx["results"] = [_message_view(r, {}, {}) for r in found]
        chats = {r.chat_jid for r in found}
        named = await extras.chat_names(db, account, list(chats))  # one query, not one a chat
        ctx["result_names"] = {jid: named.get(jid) or _phone(jid) for jid in chats}
        return ctx
    reader = await _reader_id()
    assignee: int | str | None = "any"
    if f.who == "mine":
        assignee = reader if reader is not None else -1
    elif f.who == "unassigned":
        assignee = None
    tag_id, tag_first = None, False
    if f.tag is not None:
        tag_id = await tags_store.tag_id_by_name(db, account, f.tag)
        if tag_id is None:
            return ctx
        tag_first = await tags_store.reads_tag_first(db, account, tag_id)
    try:
        rows, next_chats = await queries.list_chats(
            db,
            account,
            tag_id=tag_id,
            tag_first=tag_first,
            cursor=f.cursor,
            limit=limit,
            status=f.status,
            assignee=assignee,
            unread_for=reader,
        )
    except InvalidInput:  # a stale or forged cursor: no more chats
        rows, next_chats = [], None
    ctx["chats"] = await _chat_outs(db, account, rows)
    if next_chats:
        ctx["more_url"] = f"/panel/inbox/chats?{f.query(cursor=next_chats, part='more')}"
    ctx["previews"] = {c.id: _preview(c) for c in ctx["chats"]}
    ctx["links"] = _chat_links(ctx["chats"])
    ctx["total_unread"] = sum(c.unread for c in ctx["chats"])
    return ctx


def _chat_links(chats: list[ChatOut]) -> dict[str, tuple[str, str]]:
    """Each chat's two links in the list: the conversation fragment (htmx) and the inbox
    page with it open (href, pushed to the address bar). Quoted once per chat here, as
    Jinja's ``urlencode`` would (``/`` kept): the list is the page's largest part."""
    out: dict[str, tuple[str, str]] = {}
    for c in chats:
        account, jid = quote(c.account_id, safe="/"), quote(c.id, safe="/")
        out[c.id] = (f"/panel/inbox/{account}/{jid}", f"/panel/inbox?account={account}&chat={jid}")
    return out


def _preview(chat: ChatOut) -> str:
    """The last message's text (or caption), else its kind, for the chat list."""
    last = chat.last_message
    if last is None:
        return ""
    content = content_dict(last.content)
    part = content.get(last.type)
    if isinstance(part, dict):
        text = part.get("body") or part.get("caption") or part.get("emoji")
        if isinstance(text, str) and text:
            return text[:140]
    return _(KIND_NAMES[last.type]) if last.type in KIND_NAMES else last.type


def _phone(jid: str) -> str:
    """+E.164 for a person's jid, else the jid (groups without a name)."""
    return jid_phone(jid) or jid


class View:
    """What a template shows of one thing, as attributes: Jinja reads ``m.text`` with
    ``getattr`` first and only then ``m["text"]``, so on a dict every read in the
    template raised and caught an AttributeError (the conversation reads a message's
    fields ~25 times, 60 messages a page). ``view["key"]`` still works for Python."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getitem__(self, key: str) -> Any:
        return self.__dict__[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.__dict__[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.__dict__

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    if TYPE_CHECKING:  # for mypy only: a missing key must stay an AttributeError to Jinja

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


def _message_view(row: MessageRow, quoted: dict[str, MessageRow], senders: dict[str, str]) -> View:
    """What the conversation template shows of one message."""
    content = orjson.loads(row.content_json)
    kind = row.type
    part = content.get(kind) if isinstance(content.get(kind), dict) else {}
    media_url = None
    if row.media_id:
        media_url = f"/api/accounts/{quote(row.account_id, safe='')}/media/{quote(row.media_id)}"
    elif isinstance(part.get("link"), str) and part["link"].startswith(("https://", "http://")):
        media_url = None  # never load third-party links into the page (CSP and privacy)
    reply = quoted.get(row.reply_to or "")
    return View({
        "id": row.id,
        "chat_jid": row.chat_jid,
        "direction": row.direction,
        "type": kind,
        "text": row.body or "",
        "filename": part.get("filename") if isinstance(part, dict) else None,
        "media_url": media_url,
        "emoji": part.get("emoji") if kind == "reaction" and isinstance(part, dict) else None,
        "status": row.status,
        "error": row.error,
        "at": row.wa_timestamp or row.created_at,
        "deleted": row.deleted_at is not None,
        "sender": senders.get(row.sender_jid or "") if row.direction == "in" else None,
        "quote": (reply.body or _("(media)")) if reply is not None else None,
        "origin": row.origin,
        "cursor": row.cursor,
    })  # fmt: skip


async def _conversation(
    account: str,
    jid: str,
    *,
    mark_read: bool,
    cursor: str | None = None,
    since: int | None = None,
) -> View:
    """The open chat: messages (oldest first, grouped by day), notes, tags, assignees.

    ``cursor``: the page older than it (scrolling up); ``since``: every message from
    that page position on (a live refresh keeps the older pages the user loaded)."""
    await _granted(account)
    db = _db()
    row = await queries.chat_row(db, account, jid)
    if row is None:
        raise NotFound("no such chat")
    who = principal()
    reader = await _reader_id()
    if mark_read and reader is not None:
        await _mark_read(account, jid, reader)
    rows: list[MessageRow] = []
    older: str | None = None
    if since is not None:
        rows, older = await extras.messages_since(db, account, jid, since)
    if not rows:
        try:
            rows, older = await queries.list_messages(
                db, account, chat_jid=jid, cursor=cursor, limit=MESSAGE_PAGE
            )
        except InvalidInput:  # a stale or forged cursor: the newest page
            rows, older = await queries.list_messages(db, account, chat_jid=jid, limit=MESSAGE_PAGE)
    rows.reverse()
    wanted = [r.reply_to for r in rows if r.reply_to]
    quoted = await queries.message_rows_by_id(db, account, wanted) if wanted else {}
    senders: dict[str, str] = {}
    if row.is_group:  # every sender's name in one query
        known = await extras.sender_names(db, account, [r.sender_jid for r in rows if r.sender_jid])
        for r in rows:
            if r.sender_jid and r.sender_jid not in senders:
                name = known.get(r.sender_jid)
                senders[r.sender_jid] = name or r.sender_name or _phone(r.sender_jid)
    ids = [r.id for r in rows if r.type != "reaction"]
    reactions = await extras.reactions_for(db, account, jid, ids, senders, _("You"))
    edited = await extras.edited_at(db, account, ids)
    days: list[tuple[str, list[View]]] = []
    with i18n.rendering():  # language and zone looked up once, not per message
        for r in rows:
            view = _message_view(r, quoted, senders)
            if view.type == "reaction":
                continue  # shown under the message they react to
            view.reactions = reactions.get(r.id, [])
            view.edited = r.id in edited
            if view.sender and r.sender_jid:
                view.sender_picture = extras.picture_url(account, r.sender_jid)
                view.sender_initials = extras.initials(view.sender)
            view.time = i18n.fmt_time(view.at)
            key = i18n.fmt_day(view.at)
            if not days or days[-1][0] != key:
                days.append((key, []))
            days[-1][1].append(view)
    chat = (await _chat_outs(db, account, [row]))[0]
    notes, _n = await notes_store.list_notes(db, account, jid, cursor=None, limit=50)
    tags, _t = await tags_store.list_tags(db, account, cursor=None, limit=200)
    replies, _q = await quick_replies_store.list_quick_replies(
        db, account, q=None, cursor=None, limit=200
    )
    people = (
        await inbox_store.assignees(db, account) if who.can(Permission.CONVERSATIONS_ASSIGN) else []
    )
    title = chat.name or _phone(chat.id)
    return View({
        "account": account,
        "chat": chat,
        "title": title,
        "picture": extras.picture_url(account, jid),
        "initials": extras.initials(title),
        "days": days,
        "older_url": f"{chat_url(account, jid)}?{urlencode({'part': 'older', 'cursor': older})}"
        if older
        else None,
        "since": rows[0].cursor if rows else None,
        "emoji": extras.EMOJI,
        "notes": list(reversed(notes)),
        "all_tags": [t for t in tags if t.name not in {c.name for c in chat.tags}],
        "quick_replies": replies,
        "people": people,
        "chat_url": chat_url(account, jid),
        "me_id": reader,
        "may": {
            "send": who.can(Permission.MESSAGES_SEND),
            "assign": who.can(Permission.CONVERSATIONS_ASSIGN),
            "tag": who.can(Permission.TAGS_APPLY),
            "create_tag": who.can(Permission.TAGS_MANAGE),
            "note": who.can(Permission.NOTES_WRITE),
        },
    })  # fmt: skip


async def _mark_read(account: str, jid: str, user_id: int) -> None:
    """As POST .../chats/{chat}/read: the user's read position, and WhatsApp when the
    account's ``mark_read_by_users`` is on (best effort)."""
    db = _db()
    if not await inbox_store.has_unread(db, account, jid, user_id):
        return  # already read: no write transaction (most openings of a chat)
    async with db.write() as conn:
        ids = await inbox_store.mark_read(conn, account, jid, user_id, time.time())
    account_row = await store.account_row(db, account)
    if ids and account_row is not None and account_row.settings.get("mark_read_by_users"):
        try:
            await call(
                protocol.ChatMarkReadParams(account_id=account, chat_id=jid, message_ids=ids)
            )
        except (IpcError, ClientError) as exc:  # best effort, as the API's read route
            log.info(
                "chat not marked read on WhatsApp", extra={"account_id": account, "error": str(exc)}
            )


async def _events_after() -> int:
    return await store.last_event_id(_db())


# -- pages -------------------------------------------------------------------------------


@bp.get("/inbox")
@requires(Permission.MESSAGES_READ)
@hide
async def inbox() -> Response:
    f = Filters.parse(request.args)
    conversation = None
    if f.chat and f.account:  # read first: the list then shows its badge gone
        conversation = await _conversation(f.account, _chat_jid(f.chat), mark_read=True)
    ctx = await _chat_list(f)
    return await page(
        "panel/inbox.html",
        nav="inbox",
        conversation=conversation,
        events_after=await _events_after(),
        **ctx,
    )


@bp.get("/inbox/chats")
@requires(Permission.MESSAGES_READ)
@hide
async def chat_list() -> Response:
    """The chat list alone (filters changed, or an event said something moved)."""
    f = Filters.parse(request.args)
    if request.args.get("part") == "more":  # the next page, as list items
        return await page("panel/inbox_chat_items.html", **(await _chat_list(f)))
    f.cursor = None
    return await page("panel/inbox_chats.html", **(await _chat_list(f, limit=_shown())))


def _shown() -> int:
    """How many chats a refresh of the list reads: as many as the page shows (``shown``,
    sent by panel.js), at least a page, at most MAX_CHATS_SHOWN."""
    value = str(request.args.get("shown", ""))
    shown = int(value) if value.isdigit() and len(value) < 7 else 0
    return max(CHAT_PAGE, min(shown, MAX_CHATS_SHOWN))


@bp.get("/inbox/<account>/<path:chat_id>")
@requires(Permission.MESSAGES_READ)
@hide
async def conversation(account: str, chat_id: str) -> Response:
    """The conversation and its side panel (htmx), or the inbox with it open."""
    jid = _chat_jid(chat_id)
    part = request.args.get("part")
    if not is_htmx():
        return see_other(f"/panel/inbox?{urlencode({'account': account, 'chat': jid})}")
    if part == "older":  # scrolling up: the page before the cursor, as list items
        cursor = str(request.args.get("cursor", ""))[:200] or None
        ctx = await _conversation(account, jid, mark_read=False, cursor=cursor)
        return await page("panel/inbox_message_items.html", cv=ctx)
    since = str(request.args.get("since", ""))
    ctx = await _conversation(account, jid, mark_read=True, since=_since(since))
    if part == "messages":
        return await page("panel/inbox_messages.html", cv=ctx)
    response = await page("panel/inbox_conversation.html", cv=ctx)
    response.headers["HX-Trigger"] = "panel:read"  # the chat list drops this chat's badge
    return response


# -- actions -----------------------------------------------------------------------------


async def _form() -> dict[str, str]:
    form = await request.form
    return {k: str(v) for k, v in form.items()}


def _since(value: str) -> int | None:
    """The page position a refresh reads from (``since``: the oldest message shown)."""
    return int(value) if value.isdigit() and len(value) < 16 else None


async def _after_action(account: str, jid: str, *, error: str | None = None) -> Response:
    since = _since(str((await request.form).get("since", "")))  # keeps the loaded pages
    ctx = await _conversation(account, jid, mark_read=False, since=since)
    response = await page("panel/inbox_conversation.html", composer_error=error, cv=ctx)
    response.headers["HX-Trigger"] = "panel:messages"  # the chat list shows the change
    return response


@bp.post("/inbox/<account>/<path:chat_id>/send")
@requires(Permission.MESSAGES_SEND)
@hide
async def send(account: str, chat_id: str) -> Response:
    """Send text, or a quick reply (rendered for this chat), optionally as a reply."""
    jid = await existing_chat(account, chat_id)
    form = await _form()
    text = form.get("text", "").strip()
    reply_to = form.get("reply_to", "").strip()[:128] or None
    quick_reply = form.get("quick_reply_id", "").strip()
    media_id = form.get("media_id", "").strip()[:200]
    extra: dict[str, Any] = {"context": {"message_id": reply_to}} if reply_to else {}
    db = _db()
    try:
        if quick_reply.isdigit():
            data = await quick_replies_store.compose_send(
                db,
                account,
                QuickReplySendIn.model_validate(
                    {
                        "to": jid,
                        "type": "quick_reply",
                        "quick_reply": {
                            "id": int(quick_reply),
                            "variables": extras.form_variables(form),
                        },
                        **extra,
                    }
                ),
                agent=principal().name,
            )
        elif media_id:  # uploaded by the page through POST /api/accounts/{id}/media
            if len(text) > 1024:
                raise InvalidInput(_("The caption is too long."))
            content = extras.media_message(
                form.get("media_kind", ""), media_id, text, form.get("media_name", "")
            )
            data = SendMessageIn.model_validate({"to": jid, **content, **extra})
        else:
            if not text:
                raise InvalidInput(_("Write a message first."))
            if len(text) > MAX_TEXT:
                raise InvalidInput(_("The message is too long."))
            data = SendMessageIn.model_validate(
                {"to": jid, "type": "text", "text": {"body": text}, **extra}
            )
    except ClientError as exc:
        return await _after_action(account, jid, error=_send_error(exc))
    except ValidationError:
        return await _after_action(account, jid, error=_("This message cannot be sent."))
    now = time.time()

    async def store_send(conn: aiosqlite.Connection) -> sends.Accepted:
        return await sends.accept_send(
            conn, account_id=account, to=jid, message=data, client_key=None, now=now
        )

    accepted = await db.write_batched(store_send, in_thread=True)
    if accepted.created:
        await poke("send")
    return await _after_action(account, jid)


def _send_error(exc: ClientError) -> str:
    issues = exc.extra.get("issues")
    if isinstance(issues, list) and issues:
        details = "; ".join(issue_text(i) for i in issues if isinstance(i, dict))
        return f"{api_text(exc.message)}: {details}"
    return api_text(exc.message)


@bp.post("/inbox/<account>/<path:chat_id>/status")
@requires(Permission.MESSAGES_SEND)
@hide
async def set_status(account: str, chat_id: str) -> Response:
    """As PATCH .../chats/{chat} with ``status`` (resolve, reopen, pending)."""
    jid = await existing_chat(account, chat_id)
    status = (await _form()).get("status", "")
    if status not in ("open", "pending", "resolved"):
        raise InvalidInput("unknown status")
    await _change(account, jid, status=status, snoozed_until=None)
    return await _after_action(account, jid)


@bp.post("/inbox/<account>/<path:chat_id>/assign")
@requires(Permission.MESSAGES_SEND)
@hide
async def assign(account: str, chat_id: str) -> Response:
    """As PATCH .../chats/{chat} with ``assignee_id``: agents take or drop, managers
    assign anyone (inbox rules: appliance/inbox)."""
    jid = await existing_chat(account, chat_id)
    value = (await _form()).get("assignee", "")
    reader = await _reader_id()
    if value == "me":
        target = reader
    elif value == "none":
        target = None
    elif value.isdigit():
        target = int(value)
    else:
        raise InvalidInput("unknown assignee")
    await _change(account, jid, assignee_id=target)
    return await _after_action(account, jid)


async def _change(account: str, jid: str, **conversation: Any) -> None:
    db = _db()
    actor = await inbox_store.actor_of(db, principal())
    async with db.write() as conn:
        await change_conversation(conn, account, jid, actor, **conversation)
    await poke("inbox")


@bp.post("/inbox/<account>/<path:chat_id>/tags")
@requires(Permission.TAGS_APPLY)
@hide
async def tag_chat(account: str, chat_id: str) -> Response:
    """Add (``add``: a tag id, or a new name for those who may create tags) or remove
    (``remove``: a tag id) a tag on the chat."""
    jid = await existing_chat(account, chat_id)
    form = await _form()
    db = _db()
    who = principal()
    actor = notes_store.actor_of(who)
    add, remove = form.get("add", "").strip(), form.get("remove", "").strip()
    async with db.write() as conn:
        add_ids: list[int] = []
        if add.isdigit():
            add_ids = [int(add)]
        elif add:
            tag_id = await tags_store.tag_id_by_name(db, account, add)
            if tag_id is None:
                if not who.can(Permission.TAGS_MANAGE):
                    raise InvalidInput(_("No such tag; ask a manager to create it."))
                try:
                    new_tag = TagCreateIn.model_validate({"name": add})
                except ValidationError as exc:
                    raise InvalidInput(issue_text(issues_from(exc)[0])) from None
                tag_id = (await create_tag_in(conn, account, new_tag)).id  # audited as the API
            add_ids = [tag_id]
        remove_ids = [int(remove)] if remove.isdigit() else []
        if add_ids or remove_ids:
            await tags_store.apply_tags(
                conn,
                account,
                add=add_ids,
                remove=remove_ids,
                chats=[jid],
                contacts=[],
                by=actor,
                now=time.time(),
            )
    return await _after_action(account, jid)


@bp.post("/inbox/<account>/<path:chat_id>/notes")
@requires(Permission.NOTES_WRITE)
@hide
async def add_note(account: str, chat_id: str) -> Response:
    jid = await existing_chat(account, chat_id)
    body = (await _form()).get("body", "").strip()
    if not body:
        raise InvalidInput(_("Write the note first."))
    if len(body) > 4000:
        raise InvalidInput(_("The note is too long."))
    async with _db().write() as conn:
        await notes_store.create_note(conn, account, jid, body, by=principal(), now=time.time())
    return await _after_action(account, jid)


__all__ = ["ChatOut", "chat_url"]
