-- Inbox queries, third pass (issue 13): nothing to change in the schema. Every chat list
-- filter, the counts and search already read an index (their plans are checked in
-- tests/unit/test_inbox_perf.py, test_inbox_page.py, test_inbox_search.py), and at full
-- size (bench/inbox_queries.py) each request costs 8 to 21 ms of CPU; no index was added,
-- so writers pay nothing more (runbook/inbox.md, "Third pass").
SELECT 1;
