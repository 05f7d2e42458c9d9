"""API tokens and tenants in PostgreSQL (``api_tokens``, ``tenants``).

A token is ``af_<id>_<secret>``: the id names it in listings and revocation,
the secret is 256 random bits shown once. Only its SHA-256 is stored (a slow
password hash buys nothing against a secret that cannot be guessed), and it is
looked up through ``af_authenticate``, the one read that needs no tenant set.
A token has a scope (:class:`Scope`) and a tenant; ``tenant=None`` (admin
only) reaches every tenant.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import asyncpg

from agents.errors import AgentError

__all__ = [
    "Principal",
    "Scope",
    "TenantNotFound",
    "TokenNotFound",
    "authenticate",
    "create_tenant",
    "create_token",
    "get_tenant",
    "hash_token",
    "list_tenants",
    "list_tokens",
    "register_token",
    "revoke_token",
    "set_tenant",
]

_PREFIX: Final = "af_"


class Scope(StrEnum):
    """What a token may do: read (``reader``), also act (``operator``), also
    manage tokens and tenants (``admin``)."""

    READER = "reader"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        order = (Scope.READER, Scope.OPERATOR, Scope.ADMIN)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as."""

    token_id: str
    scope: Scope
    tenant: str | None  # None: every tenant

    def sees(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


class TokenNotFound(AgentError):
    status = 404

    def __init__(self, token_id: str) -> None:
        super().__init__(f"no token with id {token_id!r}")


class TenantNotFound(AgentError):
    status = 404

    def __init__(self, tenant: str) -> None:
        super().__init__(f"no tenant {tenant!r}")


def hash_token(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, secret: str) -> Principal | None:
    """The live token ``secret`` is, or None (unknown, revoked, or its tenant disabled)."""
    row = await conn.fetchrow("SELECT * FROM af_authenticate($1)", hash_token(secret))
    if row is None or not row["tenant_enabled"]:
        return None
    return Principal(row["id"], Scope(row["scope"]), row["tenant"])


_TOKEN_COLUMNS: Final = "id, name, scope, tenant, created_by, created_at, revoked_at"


async def create_token(
    conn: asyncpg.Connection, *, scope: Scope, tenant: str | None, name: str, created_by: str
) -> tuple[dict[str, Any], str]:
    """A new token's row and its secret (which is not stored)."""
    token_id = secrets.token_hex(6)
    secret = f"{_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    row = await conn.fetchrow(
        f"""INSERT INTO api_tokens (id, name, scope, tenant, token_hash, created_by)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_TOKEN_COLUMNS}""",
        token_id, name, scope.value, tenant, hash_token(secret), created_by,
    )  # fmt: skip
    return dict(row), secret


async def register_token(conn: asyncpg.Connection, token_id: str, secret: str, name: str) -> None:
    """Make ``secret`` the admin token ``token_id`` of every tenant (the token ``up``
    generates or the operator configures), replacing what that id held before."""
    await conn.execute(
        """INSERT INTO api_tokens (id, name, scope, tenant, token_hash, created_by)
           VALUES ($1, $2, 'admin', NULL, $3, 'settings')
           ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, scope = 'admin',
               tenant = NULL, revoked_at = NULL""",
        token_id, name, hash_token(secret),
    )  # fmt: skip


async def list_tokens(conn: asyncpg.Connection, *, revoked: bool = False) -> list[dict[str, Any]]:
    where = "" if revoked else " WHERE revoked_at IS NULL"
    rows = await conn.fetch(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens{where} ORDER BY created_at, id")
    return [dict(r) for r in rows]


async def revoke_token(conn: asyncpg.Connection, token_id: str) -> dict[str, Any]:
    """Revoke ``token_id`` (again is a no-op); :class:`TokenNotFound` if this
    tenant has no such token."""
    row = await conn.fetchrow(
        f"""UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
            WHERE id = $1 RETURNING {_TOKEN_COLUMNS}""",
        token_id,
    )
    if row is None:
        raise TokenNotFound(token_id)
    return dict(row)


_TENANT_COLUMNS: Final = "id, name, enabled, created_at, updated_at"


async def create_tenant(conn: asyncpg.Connection, tenant: str, name: str) -> tuple[dict[str, Any], bool]:
    """The tenant's row, and whether it is new (creating one that exists changes nothing)."""
    row = await conn.fetchrow(
        f"""INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING
            RETURNING {_TENANT_COLUMNS}""",
        tenant, name,
    )  # fmt: skip
    if row is not None:
        return dict(row), True
    existing = await conn.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant)
    assert existing is not None
    return dict(existing), False


async def get_tenant(conn: asyncpg.Connection, tenant: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant)
    if row is None:
        raise TenantNotFound(tenant)
    return dict(row)


async def list_tenants(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY id")]


async def set_tenant(
    conn: asyncpg.Connection, tenant: str, *, name: str | None = None, enabled: bool | None = None
) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""UPDATE tenants SET name = coalesce($2, name), enabled = coalesce($3, enabled),
                updated_at = now()
            WHERE id = $1 RETURNING {_TENANT_COLUMNS}""",
        tenant, name, enabled,
    )  # fmt: skip
    if row is None:
        raise TenantNotFound(tenant)
    return dict(row)
