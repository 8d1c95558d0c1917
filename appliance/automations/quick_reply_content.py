"""The message a quick reply of the team inbox becomes when an automation sends it
(an auto-reply's ``quick_reply`` action, a scheduled message whose body is a quick
reply): read from the account in the caller's transaction and rendered for one chat
with ``inbox.quick_replies_store.render_content``, the same rendering as an agent's
quick-reply send. The result is ordinary content for ``messaging.sends.accept_send``.
"""

from __future__ import annotations

from appliance.db.database import ReadSource
from appliance.errors import NotFound
from appliance.inbox import quick_replies_store
from appliance.inbox.models import QuickReplyRef
from appliance.messaging.models import Context, MessageContent


async def render_for_chat(
    source: ReadSource,
    account_id: str,
    chat_jid: str,
    ref: QuickReplyRef,
    *,
    agent: str | None,
    quote: str | None = None,
) -> MessageContent:
    """The content ``ref`` renders to in ``chat_jid`` (``{{contact.name}}`` of that
    chat, ``{{agent.name}}`` = ``agent``), quoting message ``quote`` if given.

    NotFound when the account has no such quick reply (deleted since), InvalidInput
    when the variables do not fit it (edited since), ValueError when it renders to no
    message (e.g. a caption too long)."""
    try:
        reply = await quick_replies_store.get_quick_reply(source, account_id, ref.id)
    except NotFound:
        raise NotFound(f"no quick reply {ref.id} in this account") from None
    content = quick_replies_store.render_content(
        reply,
        contact=await quick_replies_store.contact_name(source, account_id, chat_jid),
        agent=agent or "",
        to=chat_jid,
        variables=dict(ref.variables),
    )
    if quote is not None:
        content["context"] = Context(message_id=quote).model_dump()
    return MessageContent.model_validate(content)
