"""The panel's text is all translated: no literal text in templates, every message in
both catalogs (Turkish complete), placeholders kept, compiled .mo files current.

When one fails: wrap the text in ``{{ _("...") }}`` (or ``{% trans %}``), run
``scripts/panel-i18n``, translate the new Turkish ``msgstr`` entries in
``appliance/api/panel/translations/tr/LC_MESSAGES/messages.po``, run it again, commit
the .po and .mo files (runbook/panel.md).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from appliance.api.panel.i18n import LANGUAGES, TRANSLATIONS

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "appliance" / "api" / "templates" / "panel"
PANEL = REPO / "appliance" / "api" / "panel"
# Attributes a person reads (or a screen reader speaks).
READ_ATTRIBUTES = {"title", "alt", "placeholder", "aria-label", "label"}
# Elements whose text is not language: key names.
VERBATIM = {"kbd", "script", "style"}
# Comments, {% trans %} blocks and blocks that fill attributes (class names) go; then
# statements vanish and expressions become NUL (which never counts as text).
DROPPED = re.compile(
    r"\{#.*?#\}|\{%-?\s*trans\b.*?\{%-?\s*endtrans\s*-?%\}"
    r"|\{%\s*block\s+(?:\w+_class|body_attrs)\s*%\}.*?\{%\s*endblock\s*%\}",
    re.S,
)
STATEMENT = re.compile(r"\{%.*?%\}", re.S)
EXPRESSION = re.compile(r"\{\{.*?\}\}", re.S)
LETTER = re.compile(r"[^\W\d_]")
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")
# The API's N_() messages: str.format fields (api_text.py fills them from the English).
FIELD = re.compile(r"\{(\w+)\}")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in {"br", "input", "img", "meta", "link", "option", "hr", "source"}:
            self.stack.append(tag)
        for name, value in attrs:
            if name in READ_ATTRIBUTES and value and LETTER.search(value.replace("\x00", "")):
                self.found.append(f'<{tag} {name}="{value}">')

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if VERBATIM & set(self.stack):
            return
        text = data.replace("\x00", "").strip()
        if LETTER.search(text):
            self.found.append(text)


def untranslated(source: str) -> list[str]:
    """Text in a template that does not go through gettext."""
    parser = _Text()
    parser.feed(EXPRESSION.sub("\x00", STATEMENT.sub("", DROPPED.sub("", source))))
    parser.close()
    return parser.found


def test_the_checker_finds_untranslated_text() -> None:
    assert (
        untranslated("<p>{{ _('Fine') }}</p><kbd>j</kbd>{% trans %}Also fine{% endtrans %}") == []
    )
    assert untranslated("<p>Hello {{ name }}</p>") == ["Hello"]
    assert untranslated('<input placeholder="Search">') == ['<input placeholder="Search">']
    assert untranslated("<button>{{ _('Ok') }} now</button>") == ["now"]


def test_templates_have_no_untranslated_text() -> None:
    templates = sorted(TEMPLATES.glob("*.html"))
    assert len(templates) >= 10
    problems = {
        t.name: found for t in templates if (found := untranslated(t.read_text(encoding="utf-8")))
    }
    assert problems == {}, f"wrap these in _() or {{% trans %}}: {problems}"


def _extracted() -> set[str | tuple[str, ...]]:
    # What scripts/panel-i18n extracts: babel.cfg's sections (the panel, and the API's
    # N_() refusals in every module), with its keywords.
    with (PANEL / "babel.cfg").open(encoding="utf-8") as f:
        method_map, _options = parse_mapping_cfg(f)
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    found: set[str | tuple[str, ...]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(REPO), method_map=method_map, keywords=keywords
    ):
        found.add(message if isinstance(message, str) else tuple(message))
    return found


def test_catalogs_hold_every_message_translated_and_compiled() -> None:
    extracted = _extracted()
    assert len(extracted) >= 100
    for language in LANGUAGES:
        folder = TRANSLATIONS / language / "LC_MESSAGES"
        with (folder / "messages.po").open("rb") as f:
            catalog = read_po(f)
        ids = {m.id if isinstance(m.id, str) else tuple(m.id) for m in catalog if m.id}
        missing = sorted(map(str, extracted - ids))
        stale = sorted(map(str, ids - extracted))
        assert missing == [], f"{language}: messages missing, run scripts/panel-i18n: {missing}"
        assert stale == [], f"{language}: messages no longer used, run scripts/panel-i18n: {stale}"
        for message in catalog:
            if not message.id:
                continue
            assert not message.fuzzy, f"{language}: fuzzy {message.id!r}"
            strings = [message.string] if isinstance(message.string, str) else message.string
            if language != "en":  # English is the source: an empty msgstr is the msgid
                assert all(strings), f"{language}: untranslated {message.id!r}"
            wanted = set(PLACEHOLDER.findall(str(message.id)))
            fields = set(FIELD.findall(str(message.id)))
            for s in strings:
                if s:
                    assert set(PLACEHOLDER.findall(s)) == wanted, (language, message.id, s)
                    assert set(FIELD.findall(s)) == fields, (language, message.id, s)
        # The compiled catalog (what the panel loads) says the same as the .po (entries
        # equal to their msgid, or empty, mean the same to gettext either way).
        with (folder / "messages.mo").open("rb") as f:
            compiled = read_mo(f)
        assert _meaning(compiled) == _meaning(catalog), (
            f"{language}: messages.mo is stale; run scripts/panel-i18n"
        )


def _meaning(catalog: Any) -> dict[Any, Any]:
    out = {}
    for m in catalog:
        if not m.id:
            continue
        key = m.id if isinstance(m.id, str) else tuple(m.id)
        value = m.string if isinstance(m.string, str) else tuple(m.string)
        if value and value != key and (isinstance(value, str) or any(value)):
            out[key] = value
    return out


def test_turkish_says_oznitelik_for_attribute() -> None:
    """A contact's attribute is an "öznitelik" in Turkish; "özellik" (a feature) read as
    something else on the attribute screens and the import, so no message about
    attributes may use it."""
    with (TRANSLATIONS / "tr" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    about_attributes = [m for m in catalog if m.id and "attribute" in str(m.id).lower()]
    assert len(about_attributes) >= 10
    wrong = [
        str(m.id)
        for m in about_attributes
        if "özellik" in str(m.string).casefold() or "ozellik" in str(m.string).casefold()
    ]
    assert wrong == [], wrong
    # "öznitel": the stem, also before a suffix that softens its k ("özniteliği").
    unnamed = [str(m.id) for m in about_attributes if "öznitel" not in str(m.string).casefold()]
    assert unnamed == [], unnamed
