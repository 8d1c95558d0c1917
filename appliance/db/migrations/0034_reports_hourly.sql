-- Tracing (appliance/messaging/trace_links.py): a sent message keeps the traceparent
-- of its send span, so a receipt after a worker restart still joins the send's trace.
-- NULL while tracing is off (the default) and for messages not sent by this worker.
ALTER TABLE messages ADD COLUMN traceparent TEXT;

-- Reports (runbook/reports.md): report_counts summed per UTC hour, kept by triggers on
-- report_counts itself (so every source of counts feeds it), in the same transaction.
-- A report over a range whose timezone offsets are whole hours (most zones, DST
-- included) reads these, a quarter as many rows; others (+5:30, +5:45) the quarters.
CREATE TABLE report_counts_hourly (
    account_id TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    hour       INTEGER NOT NULL, -- unix seconds / 3600
    n          INTEGER NOT NULL,
    PRIMARY KEY (account_id, metric, hour)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER report_counts_hourly_added AFTER INSERT ON report_counts BEGIN
    INSERT INTO report_counts_hourly (account_id, metric, hour, n)
    VALUES (new.account_id, new.metric, new.slot / 4, new.n)
    ON CONFLICT (account_id, metric, hour) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER report_counts_hourly_changed AFTER UPDATE OF n ON report_counts BEGIN
    UPDATE report_counts_hourly SET n = n + new.n - old.n
    WHERE account_id = new.account_id AND metric = new.metric AND hour = new.slot / 4;
END;

CREATE TRIGGER report_counts_hourly_removed AFTER DELETE ON report_counts BEGIN
    UPDATE report_counts_hourly SET n = n - old.n
    WHERE account_id = old.account_id AND metric = old.metric AND hour = old.slot / 4;
    DELETE FROM report_counts_hourly
    WHERE account_id = old.account_id AND metric = old.metric AND hour = old.slot / 4
      AND n <= 0;
END;

-- Top chats: report_chat_counts summed per chat and 30-day period (period = slot /
-- 2880, counted from 1970-01-01 UTC), kept by triggers on report_chat_counts. A range
-- reads the whole periods inside it from here and only its edges (under 30 days each
-- side) from the quarter hours: at one message per chat and quarter hour, the quarter
-- hours barely compress, 30 days do (a year of one account: about 7 times fewer rows).
CREATE TABLE report_chat_periods (
    account_id TEXT    NOT NULL,
    period     INTEGER NOT NULL,
    chat_jid   TEXT    NOT NULL,
    n_in       INTEGER NOT NULL,
    n_out      INTEGER NOT NULL,
    PRIMARY KEY (account_id, period, chat_jid)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER report_chat_periods_added AFTER INSERT ON report_chat_counts BEGIN
    INSERT INTO report_chat_periods (account_id, period, chat_jid, n_in, n_out)
    VALUES (new.account_id, new.slot / 2880, new.chat_jid, new.n_in, new.n_out)
    ON CONFLICT (account_id, period, chat_jid) DO UPDATE
        SET n_in = n_in + excluded.n_in, n_out = n_out + excluded.n_out;
END;

CREATE TRIGGER report_chat_periods_changed AFTER UPDATE OF n_in, n_out ON report_chat_counts
BEGIN
    UPDATE report_chat_periods
    SET n_in = n_in + new.n_in - old.n_in, n_out = n_out + new.n_out - old.n_out
    WHERE account_id = new.account_id AND period = new.slot / 2880 AND chat_jid = new.chat_jid;
END;

CREATE TRIGGER report_chat_periods_removed AFTER DELETE ON report_chat_counts BEGIN
    UPDATE report_chat_periods SET n_in = n_in - old.n_in, n_out = n_out - old.n_out
    WHERE account_id = old.account_id AND period = old.slot / 2880 AND chat_jid = old.chat_jid;
    DELETE FROM report_chat_periods
    WHERE account_id = old.account_id AND period = old.slot / 2880 AND chat_jid = old.chat_jid
      AND n_in <= 0 AND n_out <= 0;
END;

-- What exists already.
INSERT INTO report_counts_hourly (account_id, metric, hour, n)
SELECT account_id, metric, slot / 4, SUM(n) FROM report_counts GROUP BY 1, 2, 3;
INSERT INTO report_chat_periods (account_id, period, chat_jid, n_in, n_out)
SELECT account_id, slot / 2880, chat_jid, SUM(n_in), SUM(n_out) FROM report_chat_counts
GROUP BY 1, 2, 3;
