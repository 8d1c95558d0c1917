-- Reserved: filled in by the branch that builds durable chat/message actions that reach WhatsApp (issue 12) (numbers assigned up front so
-- parallel branches do not collide). Until then it changes nothing.
SELECT 1;
