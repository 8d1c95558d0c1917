-- Reports (runbook/reports.md): the response-times report reads, for the conversations
-- first answered (or resolved) in a range, the assignee and the two times it subtracts.
-- With these columns in the index the read never visits the table (a covering scan of
-- the range, in end-time order), and the median / p90 are picked in SQL
-- (appliance/reports/store.py ``duration_ranks``), so a year of one account returns a
-- few rows instead of tens of thousands. Replaces the two indexes of migration 0028
-- that held the end time only; building an index reads what exists (no backfill).
DROP INDEX report_conversations_responded;
CREATE INDEX report_conversations_responded
    ON report_conversations (account_id, first_response_at, assignee_id, first_wait_at, opened_at)
    WHERE first_response_at IS NOT NULL;

DROP INDEX report_conversations_resolved;
CREATE INDEX report_conversations_resolved
    ON report_conversations (account_id, resolved_at, assignee_id, opened_at)
    WHERE resolved_at IS NOT NULL;
