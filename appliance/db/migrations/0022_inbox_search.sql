-- Reserved: filled in by the branch that builds inbox search and filters (issue 13) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
