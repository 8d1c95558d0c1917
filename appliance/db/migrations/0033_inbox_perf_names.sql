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

-- The chat list's q (part of a name): the three names a chat is listed by (the team's
-- display name for the contact, the chat's own name, the contact's WhatsApp name) kept
-- together on the chat by the triggers below, and carried by the activity index, so
-- the walk tests each chat from the index entry alone and reads a chat's row and its
-- contact only when one of its names may match (queries.chat_name_clause still
-- applies the exact test to those). Unit separators (char 31) keep the names apart.
ALTER TABLE chats ADD COLUMN name_search TEXT;
UPDATE chats SET name_search = (
    SELECT COALESCE(ct.display_name, '') || char(31) || COALESCE(chats.name, '') || char(31)
        || COALESCE(ct.name, '')
    FROM (SELECT 1) LEFT JOIN contacts ct ON ct.account_id = chats.account_id AND ct.jid = chats.jid
);
DROP INDEX chats_recent;
CREATE INDEX chats_recent ON chats (account_id, last_message_at DESC, jid, name_search);

CREATE TRIGGER chats_name_search_insert AFTER INSERT ON chats BEGIN
    UPDATE chats SET name_search = (
        SELECT COALESCE(ct.display_name, '') || char(31) || COALESCE(new.name, '')
            || char(31) || COALESCE(ct.name, '')
        FROM (SELECT 1) LEFT JOIN contacts ct ON ct.account_id = new.account_id AND ct.jid = new.jid
    ) WHERE account_id = new.account_id AND jid = new.jid;
END;
CREATE TRIGGER chats_name_search_name AFTER UPDATE OF name ON chats BEGIN
    UPDATE chats SET name_search = (
        SELECT COALESCE(ct.display_name, '') || char(31) || COALESCE(new.name, '')
            || char(31) || COALESCE(ct.name, '')
        FROM (SELECT 1) LEFT JOIN contacts ct ON ct.account_id = new.account_id AND ct.jid = new.jid
    ) WHERE account_id = new.account_id AND jid = new.jid;
END;
CREATE TRIGGER contacts_name_search_insert AFTER INSERT ON contacts BEGIN
    UPDATE chats SET name_search = COALESCE(new.display_name, '') || char(31)
        || COALESCE(name, '') || char(31) || COALESCE(new.name, '')
    WHERE account_id = new.account_id AND jid = new.jid;
END;
CREATE TRIGGER contacts_name_search_update AFTER UPDATE OF name, display_name ON contacts BEGIN
    UPDATE chats SET name_search = COALESCE(new.display_name, '') || char(31)
        || COALESCE(name, '') || char(31) || COALESCE(new.name, '')
    WHERE account_id = new.account_id AND jid = new.jid;
END;
CREATE TRIGGER contacts_name_search_delete AFTER DELETE ON contacts BEGIN
    UPDATE chats SET name_search = char(31) || COALESCE(name, '') || char(31)
    WHERE account_id = old.account_id AND jid = old.jid;
END;
