-- Reserved: filled in by the branch that builds built-in alerts (issue 16) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
