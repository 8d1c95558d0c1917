"""Roles and what each may do: the one table the code and the runbook agree on.

Account-scoped actions also need a grant for the account: admins and principals
with ``all_accounts`` see every account; others only those granted. An account
outside the grants answers **404**, exactly as an account that does not exist, so
its existence is not revealed.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    AGENT = "agent"


class Permission(StrEnum):
    USERS_MANAGE = "users.manage"
    API_KEYS_MANAGE = "api_keys.manage"
    AUDIT_READ = "audit.read"
    DOCS_READ = "docs.read"
    ACCOUNTS_MANAGE = "accounts.manage"
    ACCOUNTS_ENDPOINT = "accounts.endpoint"
    ACCOUNTS_READ = "accounts.read"
    MESSAGES_SEND = "messages.send"
    MESSAGES_READ = "messages.read"
    WEBHOOKS_MANAGE = "webhooks.manage"
    AUTOMATIONS_MANAGE = "automations.manage"
    SCRIPTS_MANAGE = "scripts.manage"
    RETENTION_MANAGE = "retention.manage"
    CONVERSATIONS_ASSIGN = "conversations.assign"
    TAGS_APPLY = "tags.apply"
    TAGS_MANAGE = "tags.manage"
    NOTES_WRITE = "notes.write"
    NOTES_MANAGE = "notes.manage"
    QUICK_REPLIES_MANAGE = "quick_replies.manage"
    REPORTS_READ = "reports.read"
    REPORTS_OWN = "reports.own"


_ALL = frozenset(Permission)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: _ALL,
    Role.MANAGER: frozenset(
        {
            Permission.ACCOUNTS_MANAGE,
            Permission.ACCOUNTS_READ,
            Permission.MESSAGES_SEND,
            Permission.MESSAGES_READ,
            Permission.WEBHOOKS_MANAGE,
            Permission.AUTOMATIONS_MANAGE,
            Permission.CONVERSATIONS_ASSIGN,
            Permission.TAGS_APPLY,
            Permission.TAGS_MANAGE,
            Permission.NOTES_WRITE,
            Permission.NOTES_MANAGE,
            Permission.QUICK_REPLIES_MANAGE,
            Permission.REPORTS_READ,
            Permission.REPORTS_OWN,
        }
    ),
    Role.AGENT: frozenset(
        {Permission.ACCOUNTS_READ, Permission.MESSAGES_SEND, Permission.MESSAGES_READ}
        | {Permission.TAGS_APPLY, Permission.NOTES_WRITE}
        | {Permission.REPORTS_OWN}
    ),
}

DESCRIPTIONS: dict[Permission, str] = {
    Permission.USERS_MANAGE: "create, change, deactivate and delete users; reset passwords",
    Permission.API_KEYS_MANAGE: "create, list and revoke API keys",
    Permission.AUDIT_READ: "read the audit log",
    Permission.DOCS_READ: "open the interactive API docs at /docs",
    Permission.ACCOUNTS_MANAGE: "create, change, connect, log out and delete granted accounts",
    Permission.ACCOUNTS_ENDPOINT: "move a cloud account to another `base_url` (where its "
    "access token is sent), entering its secrets again",
    Permission.ACCOUNTS_READ: "see granted accounts and their status",
    Permission.MESSAGES_SEND: "send messages from granted accounts",
    Permission.MESSAGES_READ: "read chats, messages, contacts and events of granted accounts",
    Permission.WEBHOOKS_MANAGE: "manage webhook endpoints and replay deliveries",
    Permission.AUTOMATIONS_MANAGE: "manage auto-replies, scheduled messages, templates (scripts: "
    "`scripts.manage`)",
    Permission.SCRIPTS_MANAGE: "create, change, run and dry-run scripts (JavaScript run on "
    "inbound messages); read their runs and logs",
    Permission.RETENTION_MANAGE: "set event-log and audit-log retention, run the retention job",
    Permission.CONVERSATIONS_ASSIGN: "assign chats to others and take chats from others; set "
    "other users' availability",
    Permission.TAGS_APPLY: "add and remove tags on chats and contacts of granted accounts",
    Permission.TAGS_MANAGE: "create, rename, recolour and delete the tags of granted accounts",
    Permission.NOTES_WRITE: "write private notes on chats of granted accounts; edit and "
    "delete one's own",
    Permission.NOTES_MANAGE: "edit and delete anyone's private notes",
    Permission.QUICK_REPLIES_MANAGE: "create, change and delete the quick replies of granted "
    "accounts",
    Permission.REPORTS_READ: "read the reports of granted accounts (every agent's figures) "
    "and export them as CSV",
    Permission.REPORTS_OWN: "read one's own conversation and response-time figures in the "
    "reports of granted accounts",
}


def allows(role: Role | str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[Role(role)]


def permission_table_markdown() -> str:
    """The table printed in runbook/access.md (a test keeps them equal)."""
    roles = list(Role)
    lines = [
        "| permission | what it allows | " + " | ".join(r.value for r in roles) + " |",
        "| --- | --- | " + " | ".join("---" for _ in roles) + " |",
    ]
    for perm in Permission:
        marks = " | ".join("yes" if allows(r, perm) else "no" for r in roles)
        lines.append(f"| `{perm.value}` | {DESCRIPTIONS[perm]} | {marks} |")
    return "\n".join(lines)
