-- Reserved: filled in by the branch that builds auto-reply conditions and actions (issue 14) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
