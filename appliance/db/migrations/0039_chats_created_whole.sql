-- Issue 18: a chat created by a message (a send to a new number, a first message from
-- one) was written three times: the INSERT, then chats_opened's UPDATE of opened_at
-- (which fired report_conversation_changed: an INSERT and an UPDATE of its report row),
-- then chats_name_search_insert's UPDATE of name_search (rewriting the activity index
-- entry that carries it). store._touch_chat now gives both columns in its INSERT, so
-- report_conversation_created records the conversation whole and neither UPDATE runs;
-- an INSERT that leaves name_search out (history imports, older code) still gets it
-- from the trigger, as chats_opened already does for opened_at.
DROP TRIGGER chats_name_search_insert;
CREATE TRIGGER chats_name_search_insert AFTER INSERT ON chats WHEN new.name_search IS NULL BEGIN
    UPDATE chats SET name_search = (
        SELECT COALESCE(ct.display_name, '') || char(31) || COALESCE(new.name, '')
            || char(31) || COALESCE(ct.name, '')
        FROM (SELECT 1) LEFT JOIN contacts ct ON ct.account_id = new.account_id AND ct.jid = new.jid
    ) WHERE account_id = new.account_id AND jid = new.jid;
END;
