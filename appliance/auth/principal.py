"""Who is asking: a panel user (cookie session) or an integration (API key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from appliance.auth.permissions import Permission, Role, allows


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "key"]
    id: int
    name: str
    role: Role
    all_accounts: bool
    accounts: frozenset[str] = field(default_factory=frozenset)
    session_hash: str | None = None  # set for cookie sessions
    csrf_token: str | None = None

    @property
    def key(self) -> str:
        """Scope for idempotency keys, rate limits and audit: 'user:3', 'key:7'."""
        return f"{self.kind}:{self.id}"

    def can(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    def sees_account(self, account_id: str) -> bool:
        return self.role == Role.ADMIN or self.all_accounts or account_id in self.accounts
