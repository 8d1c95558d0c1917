"""Unit tests for appliance/auth/permissions.py and appliance/auth/principal.py."""

from __future__ import annotations

import pytest

from appliance.auth.permissions import (
    DESCRIPTIONS,
    ROLE_PERMISSIONS,
    Permission,
    Role,
    allows,
    permission_table_markdown,
)
from appliance.auth.principal import Principal


def _principal(
    role: Role, *, all_accounts: bool = False, accounts: frozenset[str] = frozenset()
) -> Principal:
    return Principal(
        kind="user", id=7, name="maria", role=role, all_accounts=all_accounts, accounts=accounts
    )


def test_every_permission_has_a_description() -> None:
    assert set(DESCRIPTIONS) == set(Permission)
    for perm in Permission:
        assert DESCRIPTIONS[perm].strip(), f"{perm} has an empty description"
        assert "|" not in DESCRIPTIONS[perm], f"{perm}: '|' would break the markdown table"


def test_every_role_has_a_permission_set() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_admin_has_every_permission() -> None:
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    for perm in Permission:
        assert allows(Role.ADMIN, perm)


@pytest.mark.parametrize(
    "perm",
    [
        Permission.USERS_MANAGE,
        Permission.API_KEYS_MANAGE,
        Permission.AUDIT_READ,
        Permission.ACCOUNTS_MANAGE,
        Permission.DOCS_READ,
    ],
)
def test_agent_lacks_administrative_permissions(perm: Permission) -> None:
    assert not allows(Role.AGENT, perm)
    assert not _principal(Role.AGENT).can(perm)


def test_agent_can_read_and_send() -> None:
    for perm in (Permission.ACCOUNTS_READ, Permission.MESSAGES_SEND, Permission.MESSAGES_READ):
        assert allows(Role.AGENT, perm)


def test_manager_is_between_agent_and_admin() -> None:
    agent, manager, admin = (ROLE_PERMISSIONS[r] for r in (Role.AGENT, Role.MANAGER, Role.ADMIN))
    assert agent < manager < admin
    for perm in (Permission.USERS_MANAGE, Permission.API_KEYS_MANAGE, Permission.AUDIT_READ):
        assert not allows(Role.MANAGER, perm)


def test_allows_accepts_role_strings() -> None:
    assert allows("admin", Permission.USERS_MANAGE)
    assert not allows("agent", Permission.USERS_MANAGE)
    with pytest.raises(ValueError):
        allows("root", Permission.USERS_MANAGE)


def test_allows_and_principal_can_agree_everywhere() -> None:
    for role in Role:
        for all_accounts in (False, True):
            who = _principal(role, all_accounts=all_accounts)
            for perm in Permission:
                assert who.can(perm) == allows(role, perm), (role, perm, all_accounts)


def test_principal_key_scopes_by_kind() -> None:
    assert _principal(Role.AGENT).key == "user:7"
    key = Principal(kind="key", id=3, name="crm", role=Role.AGENT, all_accounts=False)
    assert key.key == "key:3"
    assert key.accounts == frozenset()


def test_sees_account_admin_sees_everything() -> None:
    admin = _principal(Role.ADMIN)
    assert admin.sees_account("sales")
    assert admin.sees_account("anything-at-all")


def test_sees_account_all_accounts_sees_everything() -> None:
    for role in (Role.MANAGER, Role.AGENT):
        who = _principal(role, all_accounts=True)
        assert who.sees_account("sales")
        assert who.sees_account("created-later")


def test_sees_account_only_granted() -> None:
    for role in (Role.MANAGER, Role.AGENT):
        who = _principal(role, accounts=frozenset({"sales", "support"}))
        assert who.sees_account("sales")
        assert who.sees_account("support")
        assert not who.sees_account("billing")
        assert not who.sees_account("")
        assert not who.sees_account("Sales")  # account ids are exact


def test_sees_account_without_grants_sees_nothing() -> None:
    assert not _principal(Role.AGENT).sees_account("sales")


def test_permission_table_has_one_row_per_permission() -> None:
    lines = permission_table_markdown().splitlines()
    header, rule, rows = lines[0], lines[1], lines[2:]
    assert header == "| permission | what it allows | admin | manager | agent |"
    assert rule == "| --- | --- | --- | --- | --- |"
    assert len(rows) == len(Permission)
    for row, perm in zip(rows, Permission, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"`{perm.value}`"
        assert cells[1] == DESCRIPTIONS[perm]
        expected = ["yes" if allows(r, perm) else "no" for r in Role]
        assert cells[2:] == expected, perm
