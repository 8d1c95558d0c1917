-- Reserved: filled in by the branch that builds script triggers on the durable automation queue (issue 14) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
