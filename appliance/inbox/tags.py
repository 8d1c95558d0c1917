"""Tag names and colours: the rules, as plain functions (no database).

A tag's name is what people read in the panel: at most MAX_TAG_NAME characters, no
control characters, at least one that is not a space (TAG_NAME_PATTERN, also the
spec's); surrounding spaces are dropped and runs of spaces become one. Two names that
differ only in case are the same tag (``tag_key``). A colour is ``#rgb`` or
``#rrggbb`` and is stored as lower-case ``#rrggbb``; a tag created without one gets a
colour of the palette picked by its name.
"""

from __future__ import annotations

import re
import zlib

from appliance.errors import N_

MAX_TAG_NAME = 60
# No C0/C1 control characters, and something besides white space (U+FEFF is white
# space in the spec's regex dialect and not in Python's, so it is refused outright).
_ALLOWED = r"[^\x00-\x1f\x7f-\x9f\ufeff]"
TAG_NAME_PATTERN = rf"^{_ALLOWED}*[^\s\x00-\x1f\x7f-\x9f\ufeff]{_ALLOWED}*$"
_TAG_NAME = re.compile(TAG_NAME_PATTERN)

# Distinguishable on light and dark backgrounds.
PALETTE = (
    "#e11d48",
    "#ea580c",
    "#ca8a04",
    "#16a34a",
    "#0d9488",
    "#0284c7",
    "#4f46e5",
    "#9333ea",
    "#db2777",
    "#64748b",
)

_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def clean_tag_name(raw: str) -> str:
    """The name as stored; ValueError (with a message for the caller) if it cannot be one."""
    if len(raw) > MAX_TAG_NAME:
        raise ValueError(N_("a tag name is at most {limit} characters", limit=MAX_TAG_NAME))
    if not _TAG_NAME.fullmatch(raw):
        raise ValueError(N_("a tag name needs a visible character and no control characters"))
    name = " ".join(raw.split())
    if not name:  # only white space the pattern's dialect does not count as such
        raise ValueError(N_("a tag name needs a visible character"))
    return name


def tag_key(name: str) -> str:
    """What makes two names the same tag: the cleaned name, case-folded."""
    return clean_tag_name(name).casefold()


def normalize_color(raw: str) -> str:
    """``#rgb`` or ``#rrggbb`` (any case) as lower-case ``#rrggbb``; ValueError if neither."""
    if not _COLOR.match(raw):
        raise ValueError(N_("a colour is #rgb or #rrggbb, e.g. #16a34a"))
    digits = raw[1:].lower()
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return f"#{digits}"


def default_color(name: str) -> str:
    """A palette colour picked by the name (the same name always gets the same one)."""
    return PALETTE[zlib.crc32(tag_key(name).encode()) % len(PALETTE)]
