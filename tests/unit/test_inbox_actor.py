"""One actor type for the inbox (appliance/inbox/actor.py), named in events two ways."""

from __future__ import annotations

from typing import Literal

from appliance.auth.permissions import Role
from appliance.auth.principal import Principal
from appliance.automations.auto_reply_step import rule_actor
from appliance.automations.script_host import script_actor
from appliance.inbox import models, notes_store
from appliance.inbox import store as inbox_store
from appliance.inbox.actor import SYSTEM, Actor, actor_of_principal


def _principal(kind: Literal["user", "key"], id_: int, name: str) -> Principal:
    return Principal(kind=kind, id=id_, name=name, role=Role.AGENT, all_accounts=True)


def test_the_inbox_modules_share_one_actor_type() -> None:
    assert models.Actor is Actor and inbox_store.Actor is Actor and inbox_store.SYSTEM is SYSTEM


def test_a_user_and_a_key_in_both_event_shapes() -> None:
    user = actor_of_principal(_principal("user", 3, "ann"))
    assert user.as_data() == {"type": "user", "id": 3, "user_id": 3}
    assert user.as_ref() == {"principal": "user:3", "name": "ann"}
    key = actor_of_principal(_principal("key", 7, "crm"), owner_user_id=3)
    assert key.as_data() == {"type": "key", "id": 7, "user_id": 3}
    assert key.as_ref() == {"principal": "key:7", "name": "crm"}
    assert notes_store.actor_of(_principal("key", 7, "crm")).as_ref() == key.as_ref()
    assert SYSTEM.as_data() == {"type": "system"}


def test_automations_act_as_one_actor_in_both_shapes() -> None:
    class _Rule:
        id = "r1"
        name = "Away"

    rule = rule_actor(_Rule())  # type: ignore[arg-type]  # only id and name are read
    assert rule.as_data() == {
        "type": "automation",
        "automation": "auto_reply",
        "rule_id": "r1",
        "name": "Away",
    }
    assert rule.as_ref() == {"principal": "automation:r1", "name": "Away"}
    script = script_actor("s1", "Tagger")
    assert script.as_data() == {"type": "script", "id": "s1", "user_id": None}
    assert script.as_ref() == {"principal": "script:s1", "name": "Tagger"}
