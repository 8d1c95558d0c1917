-- Reserved for the reports work of the eighth session (response-time rollups).
SELECT 1;
