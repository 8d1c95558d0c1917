"""Reports per account and per agent over a date range in a chosen timezone
(runbook/reports.md): pure computations (``compute``), the rollups' SQL (``store``),
the report models (``models``) and their assembly (``service``)."""
