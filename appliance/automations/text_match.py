"""Matching an auto-reply's pattern against a message's text: pure functions.

Matching ignores case and diacritics, correctly for Turkish: both sides are *folded*
before they are compared.

- ``fold``: case-folded (Unicode ``casefold``), the dotless and dotted Turkish i's
  (U+0131, U+0130 ``İ``) and ``I`` all become ``i``, diacritics are removed (NFKD, combining
  marks dropped: ``ş``->``s``, ``ğ``->``g``, ``é``->``e``), and the few letters that do
  not decompose are spelled plainly (``ø``->``o``, ``ł``->``l``, ``æ``->``ae``). So
  ``İSTANBUL``, ``istanbul`` and ``Istanbul`` match each other, and ``teşekkürler``
  matches ``TESEKKURLER``.
- ``contains``, ``exact``, ``starts``, ``ends`` compare folded text with runs of
  whitespace as one space and the ends trimmed.
- ``regex`` runs on RE2 (``google-re2``), a linear-time engine: no pattern can
  backtrack catastrophically, so none can stall the worker. The pattern's literal
  letters are folded like the text (escapes such as ``\\S`` or ``\\p{L}`` are kept as
  written), and it runs against the folded text. Constructs RE2 does not have
  (backreferences, look-around) are refused when the rule is saved.
"""

from __future__ import annotations

import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import re2

MatchType = Literal["contains", "exact", "starts", "ends", "regex"]
MATCH_TYPES: tuple[MatchType, ...] = ("contains", "exact", "starts", "ends", "regex")

# Longest text matched: a WhatsApp message is at most 65,536 characters.
MAX_TEXT = 65_536
# RE2's memory budget for one compiled pattern: a pattern needing more is refused.
REGEX_MAX_MEM = 4 << 20

# Letters without a Unicode decomposition, after casefold.
_PLAIN = str.maketrans(
    {
        "\u0131": "i",  # dotless i (casefold leaves it); İ casefolds to i + combining dot
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "ł": "l",
        "ħ": "h",
        "ŧ": "t",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
    }
)


class InvalidPattern(ValueError):
    """A regex RE2 cannot compile: invalid, unsupported, or too large."""


def fold(text: str) -> str:
    """Case- and diacritics-insensitive form of ``text`` (see the module doc)."""
    folded = text.casefold().translate(_PLAIN)
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _spaces(text: str) -> str:
    return " ".join(text.split())


def _valid_utf8(text: str) -> str:
    """``text`` with lone surrogates (not encodable as UTF-8, which RE2 reads) as ``?``."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def fold_pattern(pattern: str) -> str:
    """Fold a regex's literal characters like ``fold`` does the text, keeping escapes
    (``\\S``, ``\\p{Lu}``, ``\\x{130}``) and group headers (``(?i:``, ``(?P<Name>``) as
    written: folding ``\\S`` into ``\\s`` would change its meaning."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1 : i + 2] in ("p", "P", "x") and pattern[i + 2 : i + 3] == "{":
                end = pattern.find("}", i + 3)
                end = n - 1 if end < 0 else end
                out.append(pattern[i : end + 1])
                i = end + 1
            else:
                out.append(pattern[i : i + 2])
                i += 2
            continue
        if c == "(" and pattern[i + 1 : i + 2] == "?":
            j = i + 2
            while j < n and pattern[j] not in ":)>":
                j += 1
            out.append(pattern[i : j + 1])
            i = j + 1
            continue
        out.append(fold(c))
        i += 1
    return "".join(out)


def _options() -> Any:
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEM
    options.log_errors = False
    options.never_capture = True  # only "does it match" is asked: no groups to track
    return options


_OPTIONS = _options()
_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_SIZE = 2048


def _reason(exc: Exception) -> str:
    """RE2's words for a refusal (its error carries them as bytes)."""
    raw = exc.args[0] if exc.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text or "RE2 cannot compile it"


def compile_regex(pattern: str) -> Any:
    """The compiled RE2 program of a rule's pattern (folded), cached; raises
    ``InvalidPattern`` saying why RE2 refuses it."""
    compiled = _CACHE.get(pattern)
    if compiled is not None:
        _CACHE.move_to_end(pattern)
        return compiled
    try:
        compiled = re2.compile(_valid_utf8(fold_pattern(pattern)), _OPTIONS)
    except Exception as exc:  # re2.error; anything else it may raise is a refusal too
        reason = _reason(exc)
        raise InvalidPattern(
            f"regex {pattern!r} is invalid or not supported by RE2 (no backreferences or "
            f"look-around): {reason}"
        ) from None
    _CACHE[pattern] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


def check_pattern(match_type: MatchType, pattern: str) -> None:
    """Raise ``InvalidPattern`` if a rule with this pattern could never be saved."""
    if match_type == "regex":
        compile_regex(pattern)
    elif not _spaces(fold(pattern)):
        raise InvalidPattern(f"pattern {pattern!r} is empty once folded")


@dataclass(frozen=True)
class PreparedText:
    """A message's text folded once for every rule: as is (for regexes) and with
    runs of whitespace as one space, ends trimmed (for the other match types)."""

    folded: str
    spaced: str
    utf8: bytes  # ``folded`` as RE2 reads it: searching bytes skips the str offset mapping


def prepare_text(text: str) -> PreparedText:
    folded = fold(text[:MAX_TEXT])
    # Lone surrogates (no UTF-8 form) become "?".
    return PreparedText(folded, _spaces(folded), folded.encode("utf-8", "replace"))


def prepare_pattern(match_type: MatchType, pattern: str) -> str:
    """A non-regex pattern folded (once per rule); a regex stays as written (it is
    compiled, folded, by ``compile_regex``)."""
    return pattern if match_type == "regex" else _spaces(fold(pattern))


def matches_prepared(match_type: MatchType, pattern: str, text: PreparedText) -> bool:
    """``matches`` for a pattern from ``prepare_pattern`` and a ``prepare_text``."""
    if match_type == "regex":
        return compile_regex(pattern).search(text.utf8) is not None
    if match_type == "contains":
        return pattern in text.spaced
    if match_type == "exact":
        return text.spaced == pattern
    if match_type == "starts":
        return text.spaced.startswith(pattern)
    return text.spaced.endswith(pattern)


def matches(match_type: MatchType, pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern`` under ``match_type``, folded (module doc)."""
    return matches_prepared(match_type, prepare_pattern(match_type, pattern), prepare_text(text))
