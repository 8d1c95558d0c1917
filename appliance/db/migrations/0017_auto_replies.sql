-- Reserved: filled in by the branch that builds auto_replies (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
