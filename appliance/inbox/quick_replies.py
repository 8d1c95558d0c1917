"""Quick replies: shortcut rules and the rendering of ``{{variables}}`` (no database).

A body holds text and variables in double braces::

    Hello {{contact.name|there}}, the price is {{price}}. -- {{agent.name}}

- built-in variables, filled in by the appliance when the reply is sent:
  ``contact.name`` (the contact's WhatsApp name, else the chat's name),
  ``agent.name`` (who sends it) and ``chat.phone`` (+E.164; empty for groups);
- custom variables (``[A-Za-z_][A-Za-z0-9_]*``) given by the sender in ``variables``;
- ``|`` after a name gives a default, used when the value is missing or empty.

Braces that do not hold a variable name (``{{ }}``, ``{{1}}``, a lone ``{{``) are
plain text. A template is checked when it is saved (``check_template``): a dotted name
that is not a built-in (``{{contact.phone}}``) is refused. A send is checked against
it (``render``): variables given that the body does not use, and custom variables the
body uses without a value or default, are refused by name (``VariableError``); the
API answers 400 naming each of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import N_

BUILTINS = ("contact.name", "agent.name", "chat.phone")
MAX_VARIABLES = 50
MAX_VARIABLE_VALUE = 1024
SHORTCUT_PATTERN = r"^/[a-z0-9][a-z0-9_-]{0,31}$"

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_]{0,63})?"
_PLACEHOLDER = re.compile(r"\{\{[ \t]*(" + _NAME + r")[ \t]*(?:\|([^{}]*))?\}\}")
_SHORTCUT = re.compile(SHORTCUT_PATTERN)


@dataclass(frozen=True)
class Placeholder:
    name: str
    default: str | None


class VariableError(ValueError):
    """A send's variables do not fit the template: names given that it does not use
    (``unknown``) and custom ones it uses that were not given (``missing``)."""

    def __init__(self, *, unknown: list[str], missing: list[str]) -> None:
        self.unknown = unknown
        self.missing = missing
        parts = []
        if unknown:
            parts.append("unknown variables: " + ", ".join(unknown))
        if missing:
            parts.append("missing variables: " + ", ".join(missing))
        super().__init__("; ".join(parts))


def clean_shortcut(raw: str) -> str:
    """``/price`` (a leading slash added when left out), lower-cased; ValueError if it
    is not a slash and 1 to 32 letters, digits, ``_`` or ``-``."""
    shortcut = raw.strip().lower()
    if not shortcut.startswith("/"):
        shortcut = "/" + shortcut
    if not _SHORTCUT.fullmatch(shortcut):
        raise ValueError(
            N_(
                "a shortcut is / and 1 to 32 letters, digits, _ or -, starting with a letter "
                "or digit, e.g. /price"
            )
        )
    return shortcut


def placeholders(body: str) -> list[Placeholder]:
    """Every ``{{...}}`` of the body in order, as written (not checked)."""
    return [Placeholder(m.group(1), m.group(2)) for m in _PLACEHOLDER.finditer(body)]


def check_template(body: str) -> list[Placeholder]:
    """The body's placeholders; ValueError naming the first unknown built-in, if any."""
    found = placeholders(body)
    for p in found:
        if "." in p.name and p.name not in BUILTINS:
            raise ValueError(
                N_(
                    "unknown variable {variable}; the built-in ones are {builtins}",
                    variable="{{" + p.name + "}}",
                    builtins=", ".join(BUILTINS),
                )
            )
    return found


def custom_names(body: str) -> list[str]:
    """The custom variables the body uses, in order of first use."""
    names: list[str] = []
    for p in placeholders(body):
        if p.name not in BUILTINS and p.name not in names:
            names.append(p.name)
    return names


def render(body: str, builtins: dict[str, str | None], variables: dict[str, str]) -> str:
    """The body with every placeholder replaced; VariableError if the variables do not fit.

    ``builtins`` holds the values of BUILTINS for this send (None or "" when unknown);
    a built-in without a value and without a default renders as nothing.
    """
    found = placeholders(body)
    used = {p.name for p in found}
    unknown = [name for name in variables if name not in used or name in BUILTINS]
    missing: list[str] = []
    for p in found:
        if p.name in BUILTINS or p.name in missing:
            continue
        if not variables.get(p.name) and p.default is None:
            missing.append(p.name)
    if unknown or missing:
        raise VariableError(unknown=unknown, missing=missing)

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        given = builtins.get(name) if name in BUILTINS else variables.get(name)
        if given:
            return given
        return default.strip() if default is not None else ""

    return _PLACEHOLDER.sub(value, body)
