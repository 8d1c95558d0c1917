"""The team inbox's pure rules: tag names and colours, @mentions, quick-reply variables."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from appliance.inbox import mentions, quick_replies, tags
from appliance.inbox.models import (
    QuickReplyIn,
    QuickReplySendIn,
    QuickReplyUpdateIn,
    TagApplyIn,
    TagCreateIn,
    TagUpdateIn,
)

# -- tags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("VIP", "VIP"),
        ("  VIP  ", "VIP"),
        ("follow   up\u3000soon", "follow up soon"),
        ("müşteri", "müşteri"),
        ("x" * 60, "x" * 60),
        ("🔥 hot", "🔥 hot"),
    ],
)
def test_tag_names_are_cleaned(raw: str, clean: str) -> None:
    assert tags.clean_tag_name(raw) == clean


@pytest.mark.parametrize("raw", ["", "   ", "\t", "x" * 61, "a\x00b", "a\nb", "\x85", "\ufeff"])
def test_bad_tag_names_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        tags.clean_tag_name(raw)


@pytest.mark.parametrize("raw", ["", "   ", "a\x00b", "x" * 61, "\ufeff", "a\x9fb"])
def test_the_spec_pattern_refuses_what_the_rule_refuses(raw: str) -> None:
    # The JSON Schema pattern and the Python rule agree, so the spec says what is accepted.
    matches = bool(re.fullmatch(tags.TAG_NAME_PATTERN, raw)) and len(raw) <= tags.MAX_TAG_NAME
    assert not matches
    with pytest.raises(ValidationError):
        TagCreateIn.model_validate({"name": raw})


def test_tag_keys_ignore_case_and_spacing() -> None:
    assert tags.tag_key("VIP") == tags.tag_key(" vip ") == tags.tag_key("Vip")
    assert tags.tag_key("Straße") == tags.tag_key("STRASSE")
    assert tags.tag_key("follow up") != tags.tag_key("followup")


@pytest.mark.parametrize(
    ("raw", "color"), [("#ABC", "#aabbcc"), ("#16A34a", "#16a34a"), ("#000", "#000000")]
)
def test_colours_are_normalized(raw: str, color: str) -> None:
    assert tags.normalize_color(raw) == color


@pytest.mark.parametrize("raw", ["red", "#abcd", "16a34a", "#ggg", "#16a34a ", ""])
def test_bad_colours_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        tags.normalize_color(raw)


def test_default_colour_is_stable_and_from_the_palette() -> None:
    assert tags.default_color("VIP") == tags.default_color(" vip ")
    assert {tags.default_color(f"tag {i}") for i in range(100)} <= set(tags.PALETTE)
    assert len({tags.default_color(f"tag {i}") for i in range(100)}) > 1


def test_tag_models() -> None:
    assert TagCreateIn.model_validate({"name": "  VIP "}).name == "VIP"
    assert TagUpdateIn.model_validate({"color": "#fff"}).name is None
    for bad in ({}, {"name": None, "color": None}, {"color": "blue"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            TagUpdateIn.model_validate(bad)
    apply = TagApplyIn.model_validate(
        {"add": [1], "chats": ["+905551112233", "905551112233@s.whatsapp.net"]}
    )
    assert apply.chats == ["905551112233@s.whatsapp.net"]  # one chat, named twice
    with pytest.raises(ValidationError):
        TagApplyIn.model_validate({"add": [0], "chats": ["+905551112233"]})
    with pytest.raises(ValidationError):
        TagApplyIn.model_validate({"add": [1], "chats": ["not a chat"]})


# -- mentions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("@maria please call", ["maria"]),
        ("thanks @Maria.", ["maria"]),
        ("@j.doe and @maria, @MARIA again", ["j.doe", "maria"]),
        ("(cc @ali_k)", ["ali_k"]),
        ("mail me at ali@example.com", []),
        ("no mention @ here", []),
        ("@@maria", []),
        ("x.@maria", []),
        ("line\n@erin: look", ["erin"]),
        ("@ops-team!", ["ops-team"]),
    ],
)
def test_mentioned_names(text: str, names: list[str]) -> None:
    assert mentions.mentioned_names(text) == names


def test_mentions_are_bounded() -> None:
    text = " ".join(f"@user{i}" for i in range(100))
    found = mentions.mentioned_names(text)
    assert found == [f"user{i}" for i in range(mentions.MAX_MENTIONS)]
    assert mentions.mentioned_names("@" + "a" * 65) == []


# -- quick replies -----------------------------------------------------------------------

BUILTINS: dict[str, str | None] = {
    "contact.name": "Ayşe",
    "agent.name": "maria",
    "chat.phone": "+905551112233",
}


def test_render_builtins_and_custom_variables() -> None:
    body = "Hi {{contact.name}}, {{ price }} for {{chat.phone}}. -- {{agent.name}}"
    text = quick_replies.render(body, BUILTINS, {"price": "100 TL"})
    assert text == "Hi Ayşe, 100 TL for +905551112233. -- maria"


def test_render_defaults() -> None:
    body = "Hi {{contact.name|there}}, see you {{when | soon}}"
    none: dict[str, str | None] = {**BUILTINS, "contact.name": None}
    assert quick_replies.render(body, none, {}) == "Hi there, see you soon"
    assert quick_replies.render(body, BUILTINS, {"when": "at 5"}) == "Hi Ayşe, see you at 5"
    # A built-in without a value and without a default is empty.
    assert quick_replies.render("[{{contact.name}}]", none, {}) == "[]"


def test_values_are_inserted_literally() -> None:
    text = quick_replies.render("{{a}} {{b}}", BUILTINS, {"a": "{{b}}", "b": "\\1 $0"})
    assert text == "{{b}} \\1 $0"


def test_unknown_and_missing_variables_are_named() -> None:
    with pytest.raises(quick_replies.VariableError) as caught:
        quick_replies.render(
            "{{price}} {{size}} {{size}}", BUILTINS, {"colour": "red", "size": "M", "x": "1"}
        )
    assert caught.value.unknown == ["colour", "x"]
    assert caught.value.missing == ["price"]
    assert "colour" in str(caught.value) and "price" in str(caught.value)
    # An empty value counts as missing; a built-in name given as a variable is unknown.
    with pytest.raises(quick_replies.VariableError) as caught:
        quick_replies.render("{{price}}", BUILTINS, {"price": "", "contact.name": "x"})
    assert caught.value.unknown == ["contact.name"] and caught.value.missing == ["price"]


def test_braces_without_a_variable_name_are_text() -> None:
    body = "{{ }} {{1x}} {{ a b }} { {x} } }} {{"
    assert quick_replies.placeholders(body) == []
    assert quick_replies.render(body, BUILTINS, {}) == body


def test_templates_are_checked_when_saved() -> None:
    found = quick_replies.check_template("{{contact.name}} {{order_id|?}}")
    assert [p.name for p in found] == ["contact.name", "order_id"]
    with pytest.raises(ValueError, match=r"contact\.phone"):
        quick_replies.check_template("call {{contact.phone}}")
    assert quick_replies.custom_names("{{a}} {{agent.name}} {{b}} {{a}}") == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "shortcut"), [("/price", "/price"), ("price", "/price"), ("/Price_2", "/price_2")]
)
def test_shortcuts(raw: str, shortcut: str) -> None:
    assert quick_replies.clean_shortcut(raw) == shortcut


@pytest.mark.parametrize("raw", ["/", "/-x", "/a b", "/" + "a" * 33, "/ürün", "//x"])
def test_bad_shortcuts(raw: str) -> None:
    with pytest.raises(ValueError):
        quick_replies.clean_shortcut(raw)


def test_quick_reply_models() -> None:
    made = QuickReplyIn.model_validate({"name": "Price", "shortcut": "Price", "body": "{{p}}"})
    assert made.shortcut == "/price"
    media = {"type": "image", "link": "https://example.com/p.png"}
    assert QuickReplyIn.model_validate({"name": "P", "shortcut": "/p", "media": media}).body is None
    for bad in (
        {"name": "P", "shortcut": "/p"},  # neither body nor media
        {"name": "P", "shortcut": "/p", "body": "   "},
        {"name": "P", "shortcut": "/p", "body": "{{chat.name}}"},
        {"name": "P", "shortcut": "/p", "media": {"type": "image"}},
        {"name": "P", "shortcut": "/p", "media": {**media, "id": "med_abcdefgh"}},
        {"name": "P", "shortcut": "/p", "body": None},
    ):
        with pytest.raises(ValidationError):
            QuickReplyIn.model_validate(bad)
    assert QuickReplyUpdateIn.model_validate({"media": None}).model_fields_set == {"media"}
    for bad in ({}, {"name": None}, {"shortcut": None}, {"shortcut": "/a b"}):
        with pytest.raises(ValidationError):
            QuickReplyUpdateIn.model_validate(bad)
    send = {"to": "+905551112233", "type": "quick_reply", "quick_reply": {"id": 3}}
    assert QuickReplySendIn.model_validate(send).quick_reply.variables == {}
    for bad_ref in ({"id": 0}, {"id": 1, "variables": {"1x": "v"}}, {"id": 1, "variables": []}):
        with pytest.raises(ValidationError):
            QuickReplySendIn.model_validate({**send, "quick_reply": bad_ref})


@pytest.mark.parametrize("shortcut", ["fiyat listesi", "/-price", "/" + "a" * 33, "/fiyat!"])
def test_a_bad_shortcut_is_refused_in_words_not_with_the_pattern(shortcut: str) -> None:
    """The refusal is clean_shortcut's sentence (the panel translates it), not pydantic's
    "String should match pattern ..."; the spec still publishes the pattern."""
    from appliance.inbox.models import QuickReplyIn, QuickReplyUpdateIn

    for model, body in ((QuickReplyIn, {"name": "n", "body": "b"}), (QuickReplyUpdateIn, {})):
        with pytest.raises(ValidationError) as refused:
            model.model_validate({**body, "shortcut": shortcut})
        (error,) = refused.value.errors()
        assert error["loc"] == ("shortcut",) and error["type"] == "value_error"
        assert "a shortcut is / and 1 to 32 letters" in error["msg"]
    assert QuickReplyIn.model_json_schema()["properties"]["shortcut"]["pattern"]
