-- Operations (issue 17): one row per restore of a backup archive. A restore raises every
-- AUTOINCREMENT sequence (events: also the webhook-id) to a floor above anything the
-- installation the backup came from can have issued since (appliance/ops/ids.py), and
-- records here what it set, so `appliancectl check` and an operator can see when ids
-- jumped and why.
CREATE TABLE restore_epochs (
    epoch              INTEGER PRIMARY KEY AUTOINCREMENT,
    restored_at        REAL    NOT NULL,
    archive_created_at REAL    NOT NULL,
    archive_host       TEXT    NOT NULL DEFAULT '',
    archive_sha256     TEXT    NOT NULL,
    gap                INTEGER NOT NULL,       -- added to every sequence's high-water mark
    floors             TEXT    NOT NULL        -- JSON: table -> sequence after the restore
) STRICT;
