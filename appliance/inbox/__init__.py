"""The team inbox: conversation status and assignment, per-user read positions, tags,
private notes, quick replies, contacts' attributes, retention."""
