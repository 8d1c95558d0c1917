-- Inbox speed at size, second pass (issue 13; bench/inbox_queries.py, runbook/inbox.md).
--
-- The conversation counts (GET .../inbox/counts) group an account's chats by status
-- and count them per assignee and unread: with the newest inbound message's seq in the
-- status+assignee index they read that index alone (and the chat_reads key), never the
-- chat rows. The chat list keeps reading the same index in the same order (its first
-- five columns are unchanged), and "mine/unassigned + status + unread" is now decided
-- from the index entry before the chat row is read.
DROP INDEX chats_status_assignee;
CREATE INDEX chats_status_assignee
    ON chats (account_id, status, assignee_id, last_message_at DESC, jid, last_inbound_seq);

-- The reactions of a page of messages (the panel's conversation view): a message's
-- reactions by the message they react to, instead of reading every message of the
-- chat. Partial: only reaction rows are in it.
CREATE INDEX messages_reactions ON messages (account_id, chat_jid, reply_to)
    WHERE type = 'reaction';
