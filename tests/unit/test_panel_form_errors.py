"""web.form_errors: the one helper that turns a refusal into the messages a form shows."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, model_validator

from appliance.api.panel.api_text import api_text
from appliance.api.panel.web import form_errors
from appliance.api.validation import issues_from
from appliance.errors import InvalidInput


class Form(BaseModel):
    name: str
    size: int

    @model_validator(mode="after")
    def _whole(self) -> Form:
        if self.name == "whole":
            raise ValueError("the whole form is wrong")
        return self


def _error(data: dict[str, object]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Form.model_validate(data)
    return caught.value


def test_first_message_per_field() -> None:
    errors = form_errors(_error({"name": 3, "size": "x"}))
    assert set(errors) == {"name", "size"}
    assert "string" in errors["name"].lower()


def test_whole_form_issue_goes_under_form_key() -> None:
    exc = _error({"name": "whole", "size": 1})
    assert set(form_errors(exc)) == {"(body)"}
    assert set(form_errors(exc, form_key="_form")) == {"_form"}
    assert "whole form" in form_errors(exc, form_key="body")["body"]


def test_full_path_keeps_nested_paths() -> None:
    issues = [
        {"path": "settings.limit", "message": "too big"},
        {"path": "settings.limit", "message": "second"},
    ]
    assert form_errors(issues, full_path=True) == {"settings.limit": "too big"}
    assert form_errors(issues) == {"settings": "too big"}
    assert form_errors(None) == {}
    assert form_errors(["not a dict"]) == {}


def test_client_error_issues_and_message() -> None:
    with_issues = InvalidInput("bad", issues=[{"path": "when", "message": "in the past"}])
    assert form_errors(with_issues, form_key="_form") == {"when": "in the past"}
    bare = InvalidInput("the rule cannot run")
    assert form_errors(bare, form_key="_form") == {"_form": "the rule cannot run"}
    assert form_errors(bare) == {}


class Snooze(BaseModel):
    status: str
    snooze_s: int | None = None

    @model_validator(mode="after")
    def _together(self) -> Snooze:
        if (self.status == "snoozed") != (self.snooze_s is not None):
            raise ValueError("snooze_s goes with status snoozed, and only with it")
        return self


def test_pydantic_value_error_prefix_is_dropped() -> None:
    """pydantic words a validator's ValueError "Value error, ..."; a form shows the
    message alone, whatever the language (the JSON API's issues keep it)."""
    with pytest.raises(ValidationError) as caught:
        Snooze.model_validate({"status": "snoozed"})
    assert issues_from(caught.value)[0]["message"].startswith("Value error, ")
    message = "snooze_s goes with status snoozed, and only with it"
    assert form_errors(caught.value) == {"(body)": message}
    assert form_errors(caught.value, form_key="_form") == {"_form": message}
    issues = [{"path": "actions.0", "message": "Value error, give tag ids"}]
    assert form_errors(issues, full_path=True) == {"actions.0": "give tag ids"}
    assert form_errors(InvalidInput("Value error, no")) == {}
    assert form_errors(InvalidInput("Value error, no"), form_key="f") == {"f": "no"}
    assert api_text("Value error, x") == "x" and api_text("Value x") == "Value x"
    assert api_text("Input should be a valid integer") == "Input should be a valid integer"
