"""``@name`` mentions in private notes: which user names a text mentions (no database).

A mention is ``@`` and a user name (a letter or digit, then letters, digits, ``. _ -
@``), not glued to
a word or address before it (so ``mail@example.com`` mentions nobody). A dot, dash or
``@`` at the end belongs to the sentence, not the name: ``thanks @maria.`` mentions
``maria``. Names are compared without case, as logins are; the store decides which
names are users who may see the chat.
"""

from __future__ import annotations

import re

MAX_MENTIONS = 20
MAX_NAME = 64

_MENTION = re.compile(r"(?<![\w@.])@([A-Za-z0-9][A-Za-z0-9._@-]*)")


def mentioned_names(text: str) -> list[str]:
    """The distinct names mentioned, lower-cased, in order of first mention (at most
    MAX_MENTIONS)."""
    found: list[str] = []
    for match in _MENTION.finditer(text):
        name = match.group(1).rstrip(".-@").lower()
        if not name or len(name) > MAX_NAME or name in found:
            continue
        found.append(name)
        if len(found) == MAX_MENTIONS:
            break
    return found
