"""Agent configuration: validated, versioned in PostgreSQL, published to KV, read per run.

Write order (:func:`set_config`): the version is validated (the platform's
model, and the agent's own ``Config`` model for its values) before anything
is stored; then its row is inserted in PostgreSQL (the transaction that
picks its number), and after the commit the KV key ``config.<agent>[.<tenant>]``
of ``af_config`` is set to it (compare-and-set, never backwards). A crash
between the two leaves KV one version behind: :func:`reconcile` (the gateway
runs it at start and every :data:`RECONCILE_S`) puts the newest version of
every key whose KV record is older. The quota and budget knobs become the
scope's :class:`~mesh.queue.budgets.Quota` and :class:`~mesh.queue.budgets.Budget`
(id ``config-<hash of the scope>``), which the queue and metering enforce.

Nothing is ever deleted: a rollback writes a new version equal to an old one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from nats.js import JetStreamContext
from pydantic import ValidationError

from agents.contract import Agent
from agents.errors import AgentError
from agents.store.configs import insert_version, latest_versions, read_version
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from mesh.errors import PermanentError
from mesh.queue.agent_config import (
    AgentConfig,
    AgentDisabled,
    ConfigOverride,
    ConfigRecord,
    ConfigWatch,
    deep_merge,
    put_record,
)
from mesh.queue.budgets import Budget, Quota, put_limit, remove_limit, scope_key

__all__ = [
    "RECONCILE_S",
    "ConfigInvalid",
    "ConfigVersionNotFound",
    "RunConfig",
    "Written",
    "config_diff",
    "reconcile",
    "reconcile_forever",
    "rollback",
    "set_config",
    "validated",
]

log = logging.getLogger(__name__)

RECONCILE_S: Final = 30.0  # how often the gateway puts PostgreSQL's newest versions KV lacks


class ConfigInvalid(AgentError):
    """A config refused before it was stored: ``errors`` name each field and why."""

    status = 422

    def __init__(self, agent: str, errors: list[dict[str, str]]) -> None:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"config of {agent} refused: {first['field']}: {first['reason']}{more}")
        self.errors = errors

    @property
    def details(self) -> dict[str, Any]:
        return {"errors": self.errors}


class ConfigVersionNotFound(AgentError):
    status = 404

    def __init__(self, agent: str, tenant: str | None, version: int | None) -> None:
        whose = f"{agent} for tenant {tenant}" if tenant else agent
        super().__init__(f"no config version {version} of {whose}" if version else f"no config of {whose}")


def _errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    return [
        {"field": prefix + ".".join(str(part) for part in e["loc"]) or "(the config)", "reason": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def validated(
    agent: Agent[Any, Any], raw: dict[str, Any], tenant: str | None, base: AgentConfig | None = None
) -> AgentConfig | ConfigOverride:
    """``raw`` parsed as ``agent``'s config (``tenant`` None) or a tenant's override of ``base``;
    :class:`ConfigInvalid` naming each field and why. The values (an override's merged
    onto ``base``'s) must fit the agent's ``Config`` model when it declares one."""
    model: type[AgentConfig | ConfigOverride] = AgentConfig if tenant is None else ConfigOverride
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigInvalid(agent.key, _errors(exc)) from None
    if agent.Config is not None and parsed.values is not None:
        values = (
            parsed.values if tenant is None else deep_merge((base or AgentConfig()).values, parsed.values)
        )
        try:
            agent.Config.model_validate(values)
        except ValidationError as exc:
            raise ConfigInvalid(agent.key, _errors(exc, "values.")) from None
    return parsed


def config_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """What changed from ``old`` to ``new`` (JSON values): one entry per path
    (``values.factor``) that was ``added``, ``removed`` or ``changed``."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[dict[str, Any]] = []
        for key in sorted(old.keys() | new.keys()):
            at = f"{path}.{key}" if path else str(key)
            if key not in new:
                changes.append({"path": at, "op": "removed", "from": old[key]})
            elif key not in old:
                changes.append({"path": at, "op": "added", "to": new[key]})
            else:
                changes.extend(config_diff(old[key], new[key], at))
        return changes
    if old == new and type(old) is type(new):
        return []
    return [{"path": path or "(the config)", "op": "changed", "from": old, "to": new}]


@dataclass(frozen=True, slots=True)
class Written:
    """A version stored: its row, its KV record, and the KV revision it was published at
    (None: KV had it)."""

    row: dict[str, Any]
    record: ConfigRecord
    revision: int | None


def _limit_id(agent: str, tenant: str | None) -> str:
    return "config-" + hashlib.sha256(scope_key(agent, tenant).encode()).hexdigest()[:16]


async def _apply_limits(js: JetStreamContext, agent: str, tenant: str | None, config: dict[str, Any]) -> None:
    """The config's quota and budget knobs as the scope's Quota and Budget (or none)."""
    parsed = (AgentConfig if tenant is None else ConfigOverride).model_validate(config)
    ident = _limit_id(agent, tenant)
    if parsed.max_daily is not None or parsed.max_concurrent is not None:
        quota = Quota(id=ident, agent=agent, tenant=tenant, max_daily=parsed.max_daily,
                      max_concurrent=parsed.max_concurrent)  # fmt: skip
        await put_limit(js, quota)
    else:
        await remove_limit(js, "quota", ident)
    if parsed.budget is not None:
        b = parsed.budget
        await put_limit(js, Budget(id=ident, agent=agent, tenant=tenant, limit=b.limit, period=b.period,
                                   hard=b.hard))  # fmt: skip
    else:
        await remove_limit(js, "budget", ident)


def _record(row: dict[str, Any]) -> ConfigRecord:
    return ConfigRecord(agent=row["agent"], tenant=row["tenant"], version=row["version"],
                        config=row["config"], updated_at=row["created_at"])  # fmt: skip


async def _publish(js: JetStreamContext, row: dict[str, Any]) -> int | None:
    revision = await put_record(js, _record(row))
    await _apply_limits(js, row["agent"], row["tenant"], row["config"])
    return revision


async def set_config(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    agent: Agent[Any, Any],
    tenant: str | None,
    raw: dict[str, Any],
    *,
    scope: str | None,
    author: str = "",
    comment: str = "",
) -> Written:
    """Validate ``raw`` and store it as the next version (see the module docstring for the
    order). ``scope``: the tenant the caller acts as (None: every tenant), which row
    security holds it to."""
    base: AgentConfig | None = None
    if tenant is not None and agent.Config is not None:
        async with tenant_scope(pool, scope) as conn:
            current = await read_version(conn, agent.key, None)
        base = AgentConfig.model_validate(current["config"]) if current else None
    parsed = validated(agent, raw, tenant, base)
    config = parsed.model_dump(mode="json", exclude_none=tenant is not None)
    async with tenant_scope(pool, scope) as conn:
        row = await insert_version(conn, agent.key, tenant, config, author, comment)
    return Written(row, _record(row), await _publish(js, row))


async def rollback(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    agent: Agent[Any, Any],
    tenant: str | None,
    to: int,
    *,
    scope: str | None,
    author: str = "",
) -> Written:
    """A new version whose config equals version ``to``'s (validated again: the agent's
    model may have changed since)."""
    async with tenant_scope(pool, scope) as conn:
        old = await read_version(conn, agent.key, tenant, to)
    if old is None:
        raise ConfigVersionNotFound(agent.key, tenant, to)
    return await set_config(pool, js, agent, tenant, old["config"], scope=scope, author=author,
                            comment=f"rollback to version {to}")  # fmt: skip


async def reconcile(pool: asyncpg.Pool, js: JetStreamContext) -> int:
    """Put PostgreSQL's newest version of every key whose KV record is older (a writer
    that died between its commit and its KV put); how many were put."""
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        rows = await latest_versions(conn)
    put = 0
    for row in rows:
        if await _publish(js, row) is not None:
            put += 1
            log.warning("config of %s%s: KV was behind PostgreSQL, now at version %d", row["agent"],
                        f" for {row['tenant']}" if row["tenant"] else "", row["version"])  # fmt: skip
    return put


async def reconcile_forever(pool: asyncpg.Pool, js: JetStreamContext, every_s: float = RECONCILE_S) -> None:
    """:func:`reconcile` now and every ``every_s`` (the gateway's loop)."""
    while True:
        try:
            await reconcile(pool, js)
        except Exception as exc:  # the database or NATS away: next time
            log.warning("config reconcile: %s", exc)
        await asyncio.sleep(every_s)


class RunConfig:
    """What a worker's runs read as ``ctx.config``, and its kill switch: from a
    :class:`~mesh.queue.agent_config.ConfigWatch`, the agent's ``Config`` model
    parsed once per change."""

    def __init__(self, agent: Agent[Any, Any], watch: ConfigWatch) -> None:
        self.agent, self.watch = agent, watch
        self._parsed: dict[str, tuple[AgentConfig, Any]] = {}  # tenant -> (merged config, values as read)

    def check(self, tenant: str) -> None:
        """A :class:`PermanentError` if the kill switch is on for ``tenant``: the task is
        not started, and goes to the dead letters (replayable once enabled again)."""
        try:
            self.watch.check(self.agent.key, tenant)
        except AgentDisabled as exc:
            raise PermanentError(f"not started: {exc}") from exc

    def values(self, tenant: str) -> Any:
        """The values ``tenant``'s run reads: the agent's ``Config`` instance, or a dict."""
        merged = self.watch.merged(self.agent.key, tenant)
        cached = self._parsed.get(tenant)
        if cached is not None and cached[0] is merged:
            return cached[1]
        values: Any = merged.values
        if self.agent.Config is not None:
            try:
                values = self.agent.Config.model_validate(values)
            except ValidationError as exc:  # stored before the model changed: no run can use it
                raise PermanentError(
                    f"the config of {self.agent.key} does not fit its Config: {exc}"
                ) from exc
        self._parsed[tenant] = (merged, values)
        return values
