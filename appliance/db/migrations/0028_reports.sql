-- Reports (issue 16, runbook/reports.md): rollups kept up to date by triggers, in the
-- same transaction as the change they count, so a report reads a few thousand rows
-- instead of a year of messages, and its figures outlive the rows that housekeeping
-- and retention delete (webhook deliveries, script runs, step journals, old messages).
--
-- Time is bucketed in UTC quarter hours (slot = unix seconds / 900): every timezone's
-- offset is a multiple of 15 minutes, so a report re-buckets slots exactly into the
-- local days and hours of whatever IANA timezone the caller asks for.

-- Counters per account and quarter hour. metric: in, out.api, out.phone,
-- out.automation, auto_reply.fired, script.ok, script.error, webhook.delivered,
-- webhook.dead, webhook.attempt_ok, webhook.attempt_failed. account_id '' for
-- deliveries whose event has no account (or was pruned already).
CREATE TABLE report_counts (
    account_id TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (account_id, metric, slot)
) STRICT, WITHOUT ROWID;

-- Messages per chat and quarter hour (top chats). Dropped with the chat (the chat id
-- is personal data; retention deletes chats).
CREATE TABLE report_chat_counts (
    account_id TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    chat_jid   TEXT    NOT NULL,
    n_in       INTEGER NOT NULL DEFAULT 0,
    n_out      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, slot, chat_jid)
) STRICT, WITHOUT ROWID;
CREATE INDEX report_chat_counts_chat ON report_chat_counts (account_id, chat_jid);

-- One row per conversation (chats only hold the current one's timings): opened_at,
-- first_wait_at (the first inbound message that waited), first_response_at,
-- resolved_at, and the assignee (the last one seen). chat_jid becomes NULL when the
-- chat is deleted: the timings stay, the person does not.
CREATE TABLE report_conversations (
    id                INTEGER PRIMARY KEY,
    account_id        TEXT    NOT NULL,
    chat_jid          TEXT,
    opened_at         REAL    NOT NULL,
    first_wait_at     REAL,
    first_response_at REAL,
    resolved_at       REAL,
    assignee_id       INTEGER
) STRICT;
CREATE UNIQUE INDEX report_conversations_chat
    ON report_conversations (account_id, chat_jid, opened_at) WHERE chat_jid IS NOT NULL;
CREATE INDEX report_conversations_opened ON report_conversations (account_id, opened_at);
CREATE INDEX report_conversations_responded
    ON report_conversations (account_id, first_response_at) WHERE first_response_at IS NOT NULL;
CREATE INDEX report_conversations_resolved
    ON report_conversations (account_id, resolved_at) WHERE resolved_at IS NOT NULL;

-- Messages: the time of a message is WhatsApp's (wa_timestamp: when it was sent, also
-- for history imported later), else when we stored it (a send before it is sent).
CREATE TRIGGER report_messages AFTER INSERT ON messages BEGIN
    INSERT INTO report_counts (account_id, metric, slot, n)
    VALUES (new.account_id,
            CASE WHEN new.direction = 'in' THEN 'in' ELSE 'out.' || COALESCE(new.origin, 'api') END,
            CAST(COALESCE(new.wa_timestamp, new.created_at) / 900 AS INTEGER), 1)
    ON CONFLICT (account_id, metric, slot) DO UPDATE SET n = n + 1;
    INSERT INTO report_chat_counts (account_id, slot, chat_jid, n_in, n_out)
    VALUES (new.account_id, CAST(COALESCE(new.wa_timestamp, new.created_at) / 900 AS INTEGER),
            new.chat_jid, new.direction = 'in', new.direction = 'out')
    ON CONFLICT (account_id, slot, chat_jid) DO UPDATE
        SET n_in = n_in + excluded.n_in, n_out = n_out + excluded.n_out;
END;

-- Conversations: a chat created with its opening time, or given a new one (created,
-- or reopened after it was resolved), starts a row; later changes update it.
CREATE TRIGGER report_conversation_created AFTER INSERT ON chats
WHEN new.opened_at IS NOT NULL BEGIN
    INSERT OR IGNORE INTO report_conversations
        (account_id, chat_jid, opened_at, first_wait_at, first_response_at, resolved_at,
         assignee_id)
    VALUES (new.account_id, new.jid, new.opened_at, new.waiting_since, new.first_response_at,
            new.resolved_at, new.assignee_id);
END;

CREATE TRIGGER report_conversation_changed
AFTER UPDATE OF opened_at, waiting_since, first_response_at, resolved_at, assignee_id ON chats
WHEN new.opened_at IS NOT NULL AND (new.opened_at IS NOT old.opened_at
    OR new.waiting_since IS NOT old.waiting_since
    OR new.first_response_at IS NOT old.first_response_at
    OR new.resolved_at IS NOT old.resolved_at OR new.assignee_id IS NOT old.assignee_id) BEGIN
    INSERT OR IGNORE INTO report_conversations (account_id, chat_jid, opened_at)
    VALUES (new.account_id, new.jid, new.opened_at);
    UPDATE report_conversations SET
        first_wait_at = COALESCE(first_wait_at, new.waiting_since,
            CASE WHEN new.first_response_at IS NOT NULL THEN old.waiting_since END),
        first_response_at = new.first_response_at,
        resolved_at = new.resolved_at,
        assignee_id = new.assignee_id
    WHERE account_id = new.account_id AND chat_jid = new.jid AND opened_at = new.opened_at;
END;

CREATE TRIGGER report_chat_deleted AFTER DELETE ON chats BEGIN
    UPDATE report_conversations SET chat_jid = NULL
    WHERE account_id = old.account_id AND chat_jid = old.jid;
    DELETE FROM report_chat_counts WHERE account_id = old.account_id AND chat_jid = old.jid;
END;

-- Automations: an auto-reply rule fired (at the triggering message's time), a script
-- run finished.
CREATE TRIGGER report_auto_reply_fired AFTER UPDATE OF fired_count ON auto_reply_rules
WHEN new.fired_count > old.fired_count BEGIN
    INSERT INTO report_counts (account_id, metric, slot, n)
    VALUES (new.account_id, 'auto_reply.fired',
            CAST(COALESCE(new.last_fired_at, new.updated_at) / 900 AS INTEGER),
            new.fired_count - old.fired_count)
    ON CONFLICT (account_id, metric, slot) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER report_script_run AFTER UPDATE OF state ON script_runs
WHEN old.state = 'running' AND new.state IN ('ok', 'error') BEGIN
    INSERT INTO report_counts (account_id, metric, slot, n)
    VALUES (new.account_id, 'script.' || new.state,
            CAST(COALESCE(new.finished_at, new.started_at) / 900 AS INTEGER), 1)
    ON CONFLICT (account_id, metric, slot) DO UPDATE SET n = n + 1;
END;

-- Webhooks: deliveries that ended (delivered, or dead: given up), and every attempt;
-- the account is the event's.
CREATE TRIGGER report_webhook_delivery AFTER UPDATE OF state ON webhook_deliveries
WHEN new.state IS NOT old.state AND new.state IN ('delivered', 'dead') BEGIN
    INSERT INTO report_counts (account_id, metric, slot, n)
    VALUES (COALESCE((SELECT account_id FROM events WHERE id = new.event_id), ''),
            'webhook.' || new.state, CAST(new.updated_at / 900 AS INTEGER), 1)
    ON CONFLICT (account_id, metric, slot) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER report_webhook_attempt AFTER INSERT ON webhook_attempts BEGIN
    INSERT INTO report_counts (account_id, metric, slot, n)
    VALUES (COALESCE((SELECT e.account_id FROM webhook_deliveries d JOIN events e
                      ON e.id = d.event_id WHERE d.id = new.delivery_id), ''),
            CASE WHEN new.status BETWEEN 200 AND 299 THEN 'webhook.attempt_ok'
                 ELSE 'webhook.attempt_failed' END,
            CAST(new.at / 900 AS INTEGER), 1)
    ON CONFLICT (account_id, metric, slot) DO UPDATE SET n = n + 1;
END;

-- An account's figures go with it.
CREATE TRIGGER report_account_deleted AFTER DELETE ON accounts BEGIN
    DELETE FROM report_counts WHERE account_id = old.id;
    DELETE FROM report_chat_counts WHERE account_id = old.id;
    DELETE FROM report_conversations WHERE account_id = old.id;
END;

-- What exists already: messages, current conversations, finished deliveries and runs.
INSERT INTO report_counts (account_id, metric, slot, n)
SELECT account_id,
       CASE WHEN direction = 'in' THEN 'in' ELSE 'out.' || COALESCE(origin, 'api') END AS metric,
       CAST(COALESCE(wa_timestamp, created_at) / 900 AS INTEGER) AS slot, COUNT(*)
FROM messages GROUP BY 1, 2, 3;
INSERT INTO report_chat_counts (account_id, slot, chat_jid, n_in, n_out)
SELECT account_id, CAST(COALESCE(wa_timestamp, created_at) / 900 AS INTEGER) AS slot, chat_jid,
       SUM(direction = 'in'), SUM(direction = 'out')
FROM messages GROUP BY 1, 2, 3;
INSERT INTO report_conversations
    (account_id, chat_jid, opened_at, first_wait_at, first_response_at, resolved_at, assignee_id)
SELECT account_id, jid, COALESCE(opened_at, created_at), waiting_since, first_response_at,
       resolved_at, assignee_id
FROM chats;
INSERT INTO report_counts (account_id, metric, slot, n)
SELECT account_id, 'script.' || state, CAST(COALESCE(finished_at, started_at) / 900 AS INTEGER),
       COUNT(*)
FROM script_runs WHERE state IN ('ok', 'error') GROUP BY 1, 2, 3;
INSERT INTO report_counts (account_id, metric, slot, n)
SELECT COALESCE(e.account_id, ''), 'webhook.' || d.state, CAST(d.updated_at / 900 AS INTEGER),
       COUNT(*)
FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id
WHERE d.state IN ('delivered', 'dead') GROUP BY 1, 2, 3;
