# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""api_text: the API's messages (pydantic's and ours) in the panel user's language,
with their values carried over; and every N_() message of appliance/ in Turkish."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from pydantic import BaseModel, Field, ValidationError
from quart import Quart, g

from appliance.api.panel.api_text import PYDANTIC, api_text, issue_text, pattern_of
from appliance.api.panel.i18n import TRANSLATIONS
from appliance.api.panel.web import form_errors
from appliance.api.routes.users import _LAST_ADMIN
from appliance.api.validation import issues_from
from appliance.errors import N_, Conflict
from appliance.inbox.tags import MAX_TAG_NAME, clean_tag_name

REPO = Path(__file__).resolve().parents[2]


def _in(language: str, check: Callable[[], Any]) -> Any:
    """``check()`` inside a panel request whose user reads ``language``."""

    async def run() -> Any:
        app = Quart(__name__)
        async with app.test_request_context("/panel/"):
            g.panel_language = language
            return check()

    return asyncio.run(run())


class Form(BaseModel):
    name: str = Field(max_length=64)
    size: int = Field(ge=1, le=10)
    kind: str = Field(pattern="^[a-z]+$")


def _error(data: dict[str, object]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Form.model_validate(data)
    return caught.value


def test_n_is_the_english_message_with_its_values() -> None:
    assert N_("at most {limit} attributes", limit=50) == "at most 50 attributes"
    assert N_("no {braces} without values") == "no {braces} without values"
    with pytest.raises(ValueError, match=f"a tag name is at most {MAX_TAG_NAME} characters"):
        clean_tag_name("x" * (MAX_TAG_NAME + 1))


def test_pydantic_message_translated_with_its_value() -> None:
    exc = _error({"name": "x" * 65, "size": 11, "kind": "ok"})
    issues = issues_from(exc)
    assert issues[0]["message"] == "String should have at most 64 characters"
    turkish = _in("tr", lambda: form_errors(exc))
    assert turkish == {"name": "En fazla 64 karakter olmalı", "size": "En fazla 10 olmalı"}
    # English pages show the API's words, unchanged.
    english = _in("en", lambda: form_errors(exc))
    assert english["name"] == "String should have at most 64 characters"
    assert english["size"] == "Input should be less than or equal to 10"
    # A missing field and a literal's choices ("or" is the language's).
    missing = issues_from(_error({"size": 0, "kind": "ok"}))
    assert _in("tr", lambda: [issue_text(i) for i in missing]) == [
        "Bu alan gerekli",
        "En az 1 olmalı",
    ]
    choices = api_text("Input should be 'open', 'pending' or 'resolved'", "literal_error")
    assert choices == "Input should be 'open', 'pending' or 'resolved'"
    assert (
        _in(
            "tr",
            lambda: api_text("Input should be 'open', 'pending' or 'resolved'", "literal_error"),
        )
        == "Şunlardan biri olmalı: 'open', 'pending' veya 'resolved'"
    )


def test_our_templated_message_translated_with_its_values() -> None:
    message = N_("this account already has a tag called {name}", name=repr("VIP"))
    assert message == "this account already has a tag called 'VIP'"
    assert _in("tr", lambda: api_text(message)) == "bu hesapta 'VIP' adlı bir etiket zaten var"
    # A ValueError raised in a validator: pydantic's prefix dropped, then translated.
    text = "Value error, " + N_("a tag name is at most {limit} characters", limit=64)
    assert _in("tr", lambda: api_text(text, "value_error")) == (
        "etiket adı en fazla 64 karakter olabilir"
    )
    # A field named twice carries the same value to both places.
    twice = N_("must be between -{limit} and {limit}", limit=9007199254740991)
    assert _in("tr", lambda: api_text(twice)) == (
        "-9007199254740991 ile 9007199254740991 arasında olmalı"
    )
    # A plain message, and a refusal without issues shown under the form's key.
    refusal = Conflict(_LAST_ADMIN["delete"])
    assert _in("tr", lambda: form_errors(refusal, form_key="_form")) == {
        "_form": "son etkin yönetici silinemez; önce başka birini yönetici yapın"
    }


def test_schemas_base_messages_are_translated_too() -> None:
    """appliance/schemas_base.py cannot mark its messages (a layer below errors.N_);
    api_text's SCHEMAS_BASE does, so a number field given a word or left empty (the
    schedule form's grace time) is refused in Turkish too."""
    from appliance.api.panel.api_text import SCHEMAS_BASE
    from appliance.schemas_base import number_only

    with pytest.raises(ValueError) as caught:
        number_only("")
    said = str(caught.value)
    assert said in SCHEMAS_BASE
    assert _in("tr", lambda: api_text("Value error, " + said, "value_error")) == ("bir sayı olmalı")
    assert _in("en", lambda: api_text(said)) == "must be a JSON number"


def test_unknown_message_passes_through_unchanged() -> None:
    for message in ("the moon is not a phone", "Value error, 42 is not a colour"):
        shown = _in("tr", lambda m=message: api_text(m))
        assert shown == message.removeprefix("Value error, ")
    assert _in("tr", lambda: api_text("String should be shiny", "string_too_long")) == (
        "String should be shiny"
    )


def test_pydantic_types_match_pydantics_own_messages() -> None:
    """Every pydantic type api_text translates has its template in pydantic (a newer
    pydantic renaming a type would silently stop translating it)."""
    from pydantic_core._pydantic_core import list_all_errors

    known = {e["type"] for e in list_all_errors()}
    assert set(PYDANTIC) <= known
    assert pattern_of("at most {n} of {n}").fullmatch("at most 3 of 3")
    assert not pattern_of("at most {n} of {n}").fullmatch("at most 3 of 4")


def _marked() -> set[str]:
    """Every N_() msgid in appliance/ (the panel's and the API's)."""
    found: set[str] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(REPO / "appliance"), method_map=[("**.py", "python")], keywords={"N_": None}
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_marked_message_has_a_turkish_translation() -> None:
    marked = _marked()
    assert len(marked) >= 150
    with (TRANSLATIONS / "tr" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f)
    turkish = {m.id: m.string for m in catalog if isinstance(m.id, str) and m.id}
    untranslated = sorted(m for m in marked if not turkish.get(m))
    assert untranslated == [], f"run scripts/panel-i18n and translate: {untranslated}"
    # Ours are matched by their literal text: a template of fields alone would match
    # every message; conversions ({x!r}) and format specs are not read back (pass
    # repr(x) as the value instead).
    for msgid in marked:
        parts = list(string.Formatter().parse(msgid))
        if not any(name for _lit, name, _spec, _conv in parts):
            continue
        assert all(not spec and conv is None for _lit, _n, spec, conv in parts), msgid
        assert sum(len(lit) for lit, *_ in parts) >= 8, msgid
