"""Who made a change in the team inbox: the one actor type every inbox store takes.

A person (a panel session: ``user``), an API key (``key``, acting as its owner), the
worker itself (``system``: inbound messages, the snooze timer, auto-assignment), an
auto-reply rule (``automation``) or a script (``script``). Events name the actor in
one of two shapes, both part of the event contract (runbook/events.md) and so kept:

- conversation events (``chat.updated``, ``chat.assigned``): ``as_data()``, e.g.
  ``{"type": "user", "id": 3, "user_id": 3}`` or ``{"type": "system"}``;
- tag, quick reply and note events and a note's author: ``as_ref()``, e.g.
  ``{"principal": "user:3", "name": "ann"}`` (``ActorRef`` on the wire).

Automations subclass it to say more in ``as_data()`` (the rule or script acting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.auth.principal import Principal


@dataclass(frozen=True)
class Actor:
    kind: str = ""  # "user", "key", "system", "automation", "script"
    id: int | None = None
    user_id: int | None = None  # the user acting: the user, or the key's owner
    principal: str = ""  # "user:ID", "key:ID", "automation:RULE", "script:ID"
    name: str = ""  # as it was when acting

    def as_data(self) -> dict[str, Any]:
        """The actor as conversation events name it."""
        if self.kind == "system":
            return {"type": "system"}
        return {"type": self.kind, "id": self.id, "user_id": self.user_id}

    def as_ref(self) -> dict[str, Any]:
        """The actor as tag, quick reply and note events name it (``ActorRef``)."""
        return {"principal": self.principal, "name": self.name}


SYSTEM = Actor("system")


def actor_of_principal(who: Principal, owner_user_id: int | None = None) -> Actor:
    """The actor of a request; an API key acts as its owner (``owner_user_id``, which
    the caller looks up: ``inbox.store.actor_of`` does)."""
    user_id = who.id if who.kind == "user" else owner_user_id
    return Actor(who.kind, who.id, user_id, who.key, who.name)
