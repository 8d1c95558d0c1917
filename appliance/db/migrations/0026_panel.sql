-- Reserved: filled in by the branch that builds the web panel's user preferences (issue 15) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
