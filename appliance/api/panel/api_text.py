"""The API's messages in the user's language: the one lookup every panel page uses to
show a refusal (form errors next to fields, field messages, the error page, notices).

The API answers in English and stays so (its JSON is a contract). Two kinds of
message reach a panel page:

- pydantic's, known by their error ``type`` (an issue's ``code``): each type the forms
  can meet has a message here, marked for the catalogs; its values (limits, choices)
  are read back from pydantic's English through pydantic's own message template.
- ours (``ClientError`` and ``ValueError`` messages of routes, schemas and services),
  written as ``appliance.errors.N_("at most {limit} tags", limit=...)``: the plain
  msgid is looked up in the catalog; a templated one is matched against its msgid (a
  pattern made from the template), and the values found are put into the translation.

A message that matches nothing is shown as the API gave it (English), so a message
not yet marked is never lost, only untranslated.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from babel.support import NullTranslations
from pydantic_core._pydantic_core import list_all_errors

from appliance.api.panel import i18n
from appliance.errors import N_

# pydantic words a ValueError (or an assert) raised in a validator as "Value error,
# <its message>": the JSON API's issues keep that, the panel shows the message alone.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")

# pydantic's error types a form can meet, as the panel says them. The msgid is in
# pydantic's words, with pydantic's field names, so the values read from its message
# fill the translation (``{expected_plural}`` is left out: each language has its own
# plural rule, and these read well without one).
PYDANTIC: dict[str, str] = {
    "missing": N_("Field required"),
    "extra_forbidden": N_("Extra inputs are not permitted"),
    "string_type": N_("Input should be a valid string"),
    "string_too_short": N_("String should have at least {min_length} characters"),
    "string_too_long": N_("String should have at most {max_length} characters"),
    "string_pattern_mismatch": N_("String should match pattern '{pattern}'"),
    "greater_than": N_("Input should be greater than {gt}"),
    "greater_than_equal": N_("Input should be greater than or equal to {ge}"),
    "less_than": N_("Input should be less than {lt}"),
    "less_than_equal": N_("Input should be less than or equal to {le}"),
    "multiple_of": N_("Input should be a multiple of {multiple_of}"),
    "finite_number": N_("Input should be a finite number"),
    "int_type": N_("Input should be a valid integer"),
    "int_parsing": N_("Input should be a valid integer"),
    "int_from_float": N_("Input should be a valid integer, got a number with a fractional part"),
    "float_type": N_("Input should be a valid number"),
    "float_parsing": N_("Input should be a valid number"),
    "bool_type": N_("Input should be a valid boolean"),
    "bool_parsing": N_("Input should be a valid boolean"),
    "literal_error": N_("Input should be {expected}"),
    "enum": N_("Input should be {expected}"),
    "too_short": N_("Should have at least {min_length} items, not {actual_length}"),
    "too_long": N_("Should have at most {max_length} items, not {actual_length}"),
    "list_type": N_("Input should be a valid list"),
    "dict_type": N_("Input should be a valid dictionary"),
    "model_type": N_("Input should be a valid dictionary"),
    "date_type": N_("Input should be a valid date"),
    "date_parsing": N_("Input should be a valid date in the format YYYY-MM-DD, {error}"),
    "datetime_type": N_("Input should be a valid datetime"),
    "datetime_parsing": N_("Input should be a valid datetime, {error}"),
    "timezone_aware": N_("Input should have timezone info"),
    "url_type": N_("URL input should be a string or URL"),
    "url_parsing": N_("Input should be a valid URL, {error}"),
    "url_too_long": N_("URL should have at most {max_length} characters"),
    "url_scheme": N_("URL scheme should be {expected_schemes}"),
    "json_invalid": N_("Invalid JSON: {error}"),
    "union_tag_invalid": N_(
        "Input tag '{tag}' found using {discriminator} does not match any of the expected "
        "tags: {expected_tags}"
    ),
}

# Ours, raised where ``errors.N_`` cannot be imported (appliance/schemas_base.py, a layer
# below it), marked here so the catalogs hold them: a number field left empty or given a
# word shows "must be a JSON number" in its user's language.
SCHEMAS_BASE = (N_("must be a JSON number"), N_("use true or false"))

# pydantic lists choices as "'a', 'b' or 'c'": the "or" is the language's.
_CHOICE_OR = N_("or")
_CHOICES = {"literal_error", "enum"}


@dataclass(frozen=True, slots=True)
class _Template:
    msgid: str
    pattern: re.Pattern[str]


def _fields(template: str) -> list[str]:
    try:
        return [name for _lit, name, _spec, _conv in string.Formatter().parse(template) if name]
    except ValueError:  # a lone brace: no template
        return []


def pattern_of(template: str) -> re.Pattern[str]:
    """A pattern matching what ``template.format(...)`` makes of it, each field a group
    (a field named twice must read the same both times)."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        seen.add(name)
    return re.compile("".join(parts), re.S)


def _literal_size(template: str) -> int:
    return sum(len(lit) for lit, *_ in string.Formatter().parse(template))


@cache
def _pydantic_patterns() -> dict[str, re.Pattern[str]]:
    """pydantic's English message of each error type above, as a pattern. The templates
    come from pydantic_core's private ``list_all_errors`` (not re-exported);
    tests/unit/test_panel_api_text.py fails if it moves or a type is renamed."""
    return {
        e["type"]: pattern_of(e["message_template_python"])
        for e in list_all_errors()
        if e["type"] in PYDANTIC
    }


@cache
def _templates(language: str) -> tuple[_Template, ...]:
    """The catalog's templated msgids (``{field}``: ours, not the panel's own
    ``%(name)s``), the most specific (longest literal text) first."""
    catalog = i18n.translations(language)
    ids = [m for m in getattr(catalog, "_catalog", {}) if isinstance(m, str) and _fields(m)]
    ids.sort(key=_literal_size, reverse=True)
    return tuple(_Template(m, pattern_of(m)) for m in ids if m not in PYDANTIC.values())


def _without_prefix(message: str) -> str:
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _format(translated: str, values: dict[str, str]) -> str:
    try:
        return translated.format(**values)
    except (KeyError, IndexError, ValueError):  # a translation naming a field not there
        return translated


def _pydantic(catalog: NullTranslations, code: str, message: str) -> str | None:
    pattern = _pydantic_patterns().get(code)
    found = pattern.fullmatch(message) if pattern is not None else None
    if found is None:
        return None
    values = {k: v for k, v in found.groupdict().items() if v is not None}
    if code in _CHOICES and "expected" in values:
        values["expected"] = values["expected"].replace(
            "' or '", f"' {catalog.ugettext(_CHOICE_OR)} '"
        )
    return _format(catalog.ugettext(PYDANTIC[code]), values)


def api_text(message: str, code: str | None = None) -> str:
    """``message`` (an API issue's or refusal's, with the issue's ``code`` when known)
    in the panel user's language; without pydantic's "Value error, " prefix."""
    message = _without_prefix(message)
    language = i18n.language()
    if language == i18n.DEFAULT_LANGUAGE:  # the API's own words
        return message
    catalog = i18n.translations(language)
    if code in PYDANTIC and (said := _pydantic(catalog, code, message)) is not None:
        return said
    plain = catalog.ugettext(message)
    if plain != message:
        return plain
    for template in _templates(language):
        found = template.pattern.fullmatch(message)
        if found is not None:
            return _format(catalog.ugettext(template.msgid), found.groupdict())
    if code is None:  # a bare pydantic message (str(ValidationError)'s lines)
        for known in PYDANTIC:
            if (said := _pydantic(catalog, known, message)) is not None:
                return said
    return message


def issue_text(issue: Mapping[str, object]) -> str:
    """An API issue's (``{path, message, code}``) message in the user's language."""
    code = issue.get("code")
    return api_text(str(issue.get("message", "")), code if isinstance(code, str) else None)
