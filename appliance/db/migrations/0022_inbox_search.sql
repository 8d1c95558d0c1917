-- Team inbox search and filters (issue 13, item 8). Every common filter of the chat
-- list walks an index of the account's chats in list order (most recent activity
-- first), so a page stops early and no filter reads the whole table; a test checks the
-- plans (tests/unit/test_inbox_search.py).
--
-- Already indexed: newest first (chats_recent), status (chats_status), assignee
-- (chats_assignee), tag (chat_tags_tag), messages of a chat (messages_chat), message
-- and note text (messages_fts, notes_fts). Added here:

-- archived=true|false: the archived chats (usually few) without walking the others.
CREATE INDEX chats_archived ON chats (account_id, archived, last_message_at DESC, jid);

-- status with assignee ("mine and open", "unassigned and pending"): both equalities
-- from one index, in list order.
CREATE INDEX chats_status_assignee
    ON chats (account_id, status, assignee_id, last_message_at DESC, jid);
