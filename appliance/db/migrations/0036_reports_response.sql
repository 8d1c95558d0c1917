-- Reports (runbook/reports.md): the response-times report reads, for the conversations
-- first answered (or resolved) in a range, the assignee and the two times it subtracts.
-- With these columns in the index the read never visits the table (a covering scan of
-- the range, in end-time order: the business-hours path, which needs both times), and
-- without business hours the median and p90 are picked in SQL (below), so a year of
-- one account returns a few rows instead of tens of thousands. Replaces the two indexes of 0028
-- that held the end time only; building an index reads what exists (no backfill).
DROP INDEX report_conversations_responded;
CREATE INDEX report_conversations_responded
    ON report_conversations (account_id, first_response_at, assignee_id, first_wait_at, opened_at)
    WHERE first_response_at IS NOT NULL;

DROP INDEX report_conversations_resolved;
CREATE INDEX report_conversations_resolved
    ON report_conversations (account_id, resolved_at, assignee_id, opened_at)
    WHERE resolved_at IS NOT NULL;

-- The median and p90 themselves: each duration indexed in length order, per account
-- and per account and assignee (expression indexes; the expressions are those of
-- appliance/reports/store.py ``_DURATIONS``, character for character, or SQLite will
-- not use them). The value at rank k of a range is then one walk of the index in length
-- order, skipping the conversations whose end falls outside the range, in SQLite's C
-- code: no sort, and no row per conversation handed to Python.
CREATE INDEX report_conversations_first_response_length
    ON report_conversations (account_id, (first_response_at - COALESCE(first_wait_at, opened_at)),
                             first_response_at, first_wait_at, opened_at)
    WHERE first_response_at IS NOT NULL;
CREATE INDEX report_conversations_first_response_agent_length
    ON report_conversations (account_id, assignee_id,
                             (first_response_at - COALESCE(first_wait_at, opened_at)),
                             first_response_at, first_wait_at, opened_at)
    WHERE first_response_at IS NOT NULL;
CREATE INDEX report_conversations_resolution_length
    ON report_conversations (account_id, (resolved_at - opened_at), resolved_at, opened_at)
    WHERE resolved_at IS NOT NULL;
CREATE INDEX report_conversations_resolution_agent_length
    ON report_conversations (account_id, assignee_id, (resolved_at - opened_at), resolved_at,
                             opened_at)
    WHERE resolved_at IS NOT NULL;
