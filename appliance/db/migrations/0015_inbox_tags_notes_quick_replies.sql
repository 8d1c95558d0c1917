-- Reserved: filled in by the branch that builds inbox_tags_notes_quick_replies (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
