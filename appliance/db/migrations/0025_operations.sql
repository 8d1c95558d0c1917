-- Reserved: filled in by the branch that builds backup, restore and id high-water marks (issue 17) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
