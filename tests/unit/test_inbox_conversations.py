"""The conversation rules (appliance/inbox/conversations.py): status transitions,
reopening on inbound, snooze ends, who may assign, round-robin choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.inbox.conversations import (
    MAX_SNOOZE_S,
    Conversation,
    RuleError,
    may_assign,
    next_assignee,
    on_inbound,
    set_status,
    snooze_ended,
)

T0 = 1_000_000.0


def test_resolve_records_the_time_and_clears_what_waits() -> None:
    conv = Conversation(opened_at=T0, waiting_since=T0 + 1, first_response_at=T0 + 5)
    done = set_status(conv, "resolved", now=T0 + 60)
    assert done.status == "resolved" and done.resolved_at == T0 + 60
    assert done.waiting_since is None
    assert (done.opened_at, done.first_response_at) == (T0, T0 + 5)
    # Resolving again keeps the first resolution time.
    assert set_status(done, "resolved", now=T0 + 99).resolved_at == T0 + 60


def test_leaving_resolved_starts_a_new_conversation() -> None:
    done = Conversation(
        status="resolved", opened_at=T0, first_response_at=T0 + 5, resolved_at=T0 + 60
    )
    for status in ("open", "pending"):
        again = set_status(done, status, now=T0 + 100)  # type: ignore[arg-type]
        assert again.status == status
        assert again.opened_at == T0 + 100
        assert again.first_response_at is None and again.resolved_at is None
    snoozed = set_status(done, "snoozed", now=T0 + 100, snoozed_until=T0 + 200)
    assert snoozed.opened_at == T0 + 100 and snoozed.snoozed_until == T0 + 200


def test_open_pending_and_snooze_keep_the_conversation() -> None:
    conv = Conversation(opened_at=T0, first_response_at=T0 + 3, waiting_since=T0 + 9)
    pending = set_status(conv, "pending", now=T0 + 10)
    assert pending.status == "pending" and pending.opened_at == T0
    assert pending.waiting_since == T0 + 9
    snoozed = set_status(pending, "snoozed", now=T0 + 11, snoozed_until=T0 + 500)
    assert snoozed.snoozed_until == T0 + 500 and snoozed.opened_at == T0
    opened = set_status(snoozed, "open", now=T0 + 12)
    assert opened.status == "open" and opened.snoozed_until is None
    assert opened.first_response_at == T0 + 3


@pytest.mark.parametrize(
    ("status", "until", "field"),
    [
        ("snoozed", None, "snoozed_until"),
        ("snoozed", T0, "snoozed_until"),
        ("snoozed", T0 - 1, "snoozed_until"),
        ("snoozed", T0 + MAX_SNOOZE_S + 1, "snoozed_until"),
        ("open", T0 + 10, "snoozed_until"),
        ("resolved", T0 + 10, "snoozed_until"),
        ("closed", None, "status"),
    ],
)
def test_refused_status_changes_name_the_field(
    status: str, until: float | None, field: str
) -> None:
    with pytest.raises(RuleError) as caught:
        set_status(Conversation(), status, now=T0, snoozed_until=until)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_inbound_reopens_resolved_as_a_new_conversation() -> None:
    done = Conversation(
        status="resolved", opened_at=T0, first_response_at=T0 + 1, resolved_at=T0 + 2
    )
    after, reason = on_inbound(done, now=T0 + 50)
    assert reason == "reopened"
    assert after.status == "open" and after.opened_at == T0 + 50
    assert after.waiting_since == T0 + 50
    assert after.first_response_at is None and after.resolved_at is None


def test_inbound_ends_a_snooze_but_keeps_the_conversation() -> None:
    snoozed = Conversation(status="snoozed", snoozed_until=T0 + 999, opened_at=T0)
    after, reason = on_inbound(snoozed, now=T0 + 50)
    assert reason == "unsnoozed"
    assert (after.status, after.snoozed_until, after.opened_at) == ("open", None, T0)


@pytest.mark.parametrize("status", ["open", "pending"])
def test_inbound_leaves_open_and_pending_and_keeps_the_oldest_wait(status: str) -> None:
    conv = Conversation(status=status, opened_at=T0)  # type: ignore[arg-type]
    first, reason = on_inbound(conv, now=T0 + 5)
    assert reason is None and first.status == status and first.waiting_since == T0 + 5
    second, _ = on_inbound(first, now=T0 + 9)
    assert second.waiting_since == T0 + 5


def test_snooze_ends_only_when_due() -> None:
    snoozed = Conversation(status="snoozed", snoozed_until=T0 + 10)
    assert snooze_ended(snoozed, now=T0 + 9.99) is None
    ended = snooze_ended(snoozed, now=T0 + 10)
    assert ended is not None and ended.status == "open" and ended.snoozed_until is None
    assert snooze_ended(Conversation(), now=T0) is None


def test_changes_to_lists_only_what_differs() -> None:
    conv = Conversation(opened_at=T0)
    assert conv.changes_to(conv) == {}
    done = set_status(conv, "resolved", now=T0 + 1)
    assert conv.changes_to(done) == {"status": "resolved", "resolved_at": T0 + 1}


@pytest.mark.parametrize(
    ("actor", "current", "new", "others", "allowed"),
    [
        (3, None, 3, False, True),  # take an unassigned chat
        (3, 3, None, False, True),  # drop one's own
        (3, 3, 3, False, True),  # keep one's own
        (3, 4, 3, False, False),  # take a colleague's
        (3, None, 4, False, False),  # give to a colleague
        (3, 4, None, False, False),  # unassign a colleague
        (3, 3, 4, False, False),  # hand one's own to a colleague
        (None, None, None, False, False),  # a key without an owner
        (3, 4, 5, True, True),  # conversations.assign: anything
        (None, 4, None, True, True),
    ],
)
def test_may_assign(
    actor: int | None, current: int | None, new: int | None, others: bool, allowed: bool
) -> None:
    assert may_assign(actor=actor, current=current, new=new, assigns_others=others) is allowed


def test_round_robin_takes_turns_in_id_order() -> None:
    picks = []
    last = None
    for _ in range(7):
        last = next_assignee([7, 3, 5], last=last, load={}, limit=0)
        picks.append(last)
    assert picks == [3, 5, 7, 3, 5, 7, 3]


def test_round_robin_skips_full_agents_and_gives_up_when_all_are_full() -> None:
    load = {3: 2, 5: 0, 7: 2}
    assert next_assignee([3, 5, 7], last=None, load=load, limit=2) == 5
    assert next_assignee([3, 5, 7], last=5, load=load, limit=2) == 5
    assert next_assignee([3, 5, 7], last=5, load={3: 2, 5: 2, 7: 2}, limit=2) is None
    assert next_assignee([3, 5, 7], last=5, load={3: 2, 5: 2, 7: 2}, limit=0) == 7
    assert next_assignee([], last=None, load={}, limit=0) is None
    # The last one picked may have left the rotation: the next id after it goes.
    assert next_assignee([3, 7], last=5, load={}, limit=0) == 7
    assert next_assignee([3, 7], last=9, load={}, limit=0) == 3


@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=8, unique=True),
    st.integers(1, 5),
    st.integers(1, 40),
)
def test_round_robin_is_fair_under_a_limit(users: list[int], limit: int, chats: int) -> None:
    load: dict[int, int] = {}
    last = None
    for _ in range(chats):
        chosen = next_assignee(users, last=last, load=load, limit=limit)
        if chosen is None:
            assert all(load.get(u, 0) >= limit for u in users)
            break
        assert load.get(chosen, 0) < limit
        load[chosen] = load.get(chosen, 0) + 1
        last = chosen
    assert max(load.values()) - min(load.get(u, 0) for u in users) <= 1
