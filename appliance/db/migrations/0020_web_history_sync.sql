-- Reserved: filled in by the branch that builds the web engine's own messages, history sync, names and pictures (issue 12) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
