"""Helpers that replaced copies: keyset pages (messaging.queries.next_page) and the
automation screens' refusal status (api.panel.automation_common.refusal_status)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from appliance.api.panel.automation_common import refusal_status
from appliance.errors import Conflict, Forbidden, NotFound, Unprocessable
from appliance.messaging.queries import decode_cursor, next_page


def test_next_page_gives_a_cursor_only_when_there_was_one_more_row() -> None:
    rows = [{"id": 5}, {"id": 4}, {"id": 3}]
    page, cursor = next_page(rows, 2, "n", lambda r: (r["id"],))
    assert page == rows[:2]
    assert cursor is not None and decode_cursor("n", cursor, int) == [4]
    assert next_page(rows, 3, "n", lambda r: (r["id"],)) == (rows, None)
    assert next_page([], 2, "n", lambda r: (r,)) == ([], None)
    page, cursor = next_page(rows, 1, "c", lambda r: (None, r["id"]))
    assert cursor is not None and decode_cursor("c", cursor, type(None), int) == [None, 5]


class _Model(BaseModel):
    n: int


def test_refusal_status_raises_403_and_404_again_and_answers_the_others() -> None:
    with pytest.raises(ValidationError) as caught:
        _Model.model_validate({"n": "x"})
    assert refusal_status(caught.value) == 400
    assert refusal_status(Conflict("taken")) == 409
    assert refusal_status(Unprocessable("no")) == 422
    for exc in (Forbidden("no"), NotFound("gone")):
        with pytest.raises(type(exc)):
            refusal_status(exc)
