-- Inbox speed at size (issue 13): the chat list across accounts walks every chat by
-- activity (newest first, then jid and account: the list's order), so a page stops
-- after its rows however many accounts the caller sees.
CREATE INDEX chats_recent_all ON chats (last_message_at DESC, jid, account_id);
-- Your unread count per chat: the inbound messages after your read position, counted
-- from this index alone (seq is its implicit last column) instead of reading every
-- message row of the chat.
CREATE INDEX messages_chat_in ON messages (account_id, chat_jid, direction)
    WHERE direction = 'in';
-- One user's chats across accounts ("mine", a user's), newest first: read from here
-- instead of walking every chat for the few that are theirs.
CREATE INDEX chats_assignee_all ON chats (assignee_id, last_message_at DESC, jid, account_id);
