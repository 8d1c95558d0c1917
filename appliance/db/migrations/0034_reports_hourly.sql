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

-- What exists already.
INSERT INTO report_counts_hourly (account_id, metric, hour, n)
SELECT account_id, metric, slot / 4, SUM(n) FROM report_counts GROUP BY 1, 2, 3;
