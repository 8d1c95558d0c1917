-- Sends round 6 (issue 18): a person's reply updated its chat row on every outgoing
-- message, though only a reply to a waiting chat changes anything (first_response_at,
-- waiting_since). The unchanged row was still written (a page of the chats table per
-- send) and the reports trigger on chats evaluated; now the UPDATE matches only a
-- waiting chat.
DROP TRIGGER chats_answered;
CREATE TRIGGER chats_answered AFTER INSERT ON messages
WHEN new.direction = 'out' AND new.origin IN ('api', 'phone') BEGIN
    UPDATE chats SET
        first_response_at = COALESCE(first_response_at, new.created_at),
        waiting_since = NULL
    WHERE account_id = new.account_id AND jid = new.chat_jid AND waiting_since IS NOT NULL;
END;
