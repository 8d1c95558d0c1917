-- Built-in alerts (issue 16; appliance/observability/builtin_alerts.py evaluates them,
-- appliance/worker/monitor.py writes here): one row per raised alert, resolved_at set
-- when it resolves. At most one open row per (rule, subject), so a worker restart
-- carries on with the alerts it had raised instead of raising them again.
CREATE TABLE system_alerts (
    id          INTEGER PRIMARY KEY,
    rule        TEXT    NOT NULL,
    subject     TEXT    NOT NULL DEFAULT '',   -- an account id, or '' for the appliance
    severity    TEXT    NOT NULL CHECK (severity IN ('critical', 'warning')),
    summary     TEXT    NOT NULL,
    details     TEXT    NOT NULL DEFAULT '{}', -- JSON
    raised_at   REAL    NOT NULL,
    resolved_at REAL
) STRICT;
CREATE UNIQUE INDEX system_alerts_open ON system_alerts (rule, subject) WHERE resolved_at IS NULL;
CREATE INDEX system_alerts_raised ON system_alerts (raised_at);
