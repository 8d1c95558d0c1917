-- Reserved for the inbox query work of the eighth session.
SELECT 1;
