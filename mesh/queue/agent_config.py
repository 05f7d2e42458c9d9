"""Agent configuration as the fleet obeys it live: the model, the tenant merge, and the follower.

An agent's config (:class:`AgentConfig`) is the values its code reads
(``ctx.config``) plus the platform's knobs for it; a tenant's override
(:class:`ConfigOverride`) has the same fields, all optional, merged on top
(:meth:`AgentConfig.merged`): ``values`` are deep-merged (an object merges
key by key, anything else replaces), each knob the override sets replaces
the agent's. The current version of each is a :class:`ConfigRecord` in KV
``af_config``: key ``config.<agent>`` and ``config.<agent>.<tenant>``
(:func:`mesh.names.config_key`); the history lives in PostgreSQL
(``agents.configs``), which writes here after its own commit.

:class:`ConfigWatch` follows every ``config.`` key (one
:class:`~mesh.wire.follow.KeyFollower`): a write is seen as it is stored
(milliseconds), a reconnect triggers a full read at once (a revision check:
what was written while the connection was away is caught up), and a full
read every ``resync_s`` repairs anything else missed. After each full read
the watch has *converged* at the newest revision it read; it logs "config:
last converged at revision N" when that follows a reconnect (or repaired a
value), and exports it as ``af_config_revision``.

What is not guaranteed: a process that cannot reach NATS keeps the config it
last saw until it can; a change made meanwhile reaches it on reconnect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mesh import names
from mesh.errors import MeshError
from mesh.kv import current_entries
from mesh.queue.budgets import MAX_CONCURRENT, Period
from mesh.wire.follow import KeyFollower

__all__ = [
    "AgentConfig",
    "AgentDisabled",
    "BudgetKnob",
    "ConfigOverride",
    "ConfigRecord",
    "ConfigWatch",
    "deep_merge",
    "put_record",
    "wants_dedicated",
]

log = logging.getLogger(__name__)

CONFIG_REVISION = Gauge(
    "af_config_revision", "The newest af_config revision this process has converged at (a full read)"
)
CONFIG_CONVERGED = Gauge(
    "af_config_converged_timestamp_seconds", "When this process last converged with af_config (Unix time)"
)

Mode = Literal["pool", "dedicated"]


class BudgetKnob(BaseModel):
    """Spend allowed per period (a :class:`~mesh.queue.budgets.Budget` of the scope)."""

    model_config = ConfigDict(extra="forbid")

    limit: float = Field(gt=0, description="in the price table's currency")
    period: Period = Period.MONTH
    hard: bool = Field(default=True, description="refuse new work once spent (false: alert only)")


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent: int | None = Field(
        default=None, ge=1, le=MAX_CONCURRENT, description="running at once across the fleet"
    )
    max_daily: int | None = Field(default=None, ge=1, description="executions per UTC day")
    budget: BudgetKnob | None = None
    pinned_version: str | None = Field(
        default=None, max_length=64, description="only workers of this agent version run the tasks"
    )


class AgentConfig(_Knobs):
    """An agent's configuration: ``values`` for its code, knobs for the platform."""

    values: dict[str, Any] = Field(default_factory=dict, description="what the agent reads (ctx.config)")
    enabled: bool = Field(default=True, description="false: the kill switch, no new runs start")
    mode: Mode = Field(default="pool", description="dedicated: only the agent's own workers run the tasks")

    def merged(self, override: ConfigOverride | None) -> AgentConfig:
        """This config with ``override`` on top: values deep-merged, knobs it sets replaced."""
        if override is None:
            return self
        knobs = override.model_dump(exclude_none=True, exclude={"values"})
        values = deep_merge(self.values, override.values) if override.values else self.values
        return self.model_copy(update={**knobs, "values": values})


class ConfigOverride(_Knobs):
    """A tenant's override: every field optional; what is set wins over the agent's."""

    values: dict[str, Any] | None = None
    enabled: bool | None = None
    mode: Mode | None = None


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: objects merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = (
            deep_merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
        )
    return merged


class ConfigRecord(BaseModel):
    """The current version of a config (``tenant`` None) or of a tenant's override, in KV."""

    model_config = ConfigDict(extra="ignore")

    agent: str
    tenant: str | None = None
    version: int = Field(ge=1)
    config: dict[str, Any]
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def base(self) -> AgentConfig:
        return AgentConfig.model_validate(self.config)

    def override(self) -> ConfigOverride:
        return ConfigOverride.model_validate(self.config)


class AgentDisabled(MeshError):
    """The agent's kill switch (or its tenant's) is on: no new runs."""

    status = 409

    def __init__(self, agent: str, tenant: str, by_tenant: bool) -> None:
        whose = f"tenant {tenant!r}'s override" if by_tenant else "its config"
        super().__init__(
            f"{agent} is disabled for {tenant} by {whose} (enabled=false, the kill switch): "
            f"new runs are refused until it is enabled again"
        )
        self.agent, self.tenant, self.by_tenant = agent, tenant, by_tenant

    @property
    def details(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "tenant": self.tenant,
            "kill_switch": "tenant" if self.by_tenant else "agent",
        }


async def put_record(js: JetStreamContext, record: ConfigRecord) -> int | None:
    """Store ``record`` as its key's current version unless KV holds that version or a
    later one already (compare-and-set: two writers finishing out of order never move
    a key back); the KV revision written, or None if nothing needed writing."""
    kv = await js.key_value(names.BUCKET_CONFIG)
    key, data = names.config_key(record.agent, record.tenant), record.model_dump_json().encode()
    for _ in range(10):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        current = _parse(key[len(names.CONFIG_PREFIX) :], entry.value if entry is not None else None)
        if current is not None and current.version >= record.version:
            return None
        try:
            if entry is None:
                return await kv.create(key, data)
            return await kv.update(key, data, last=entry.revision)
        except KeyWrongLastSequenceError:  # another writer was first: look again
            continue
    raise KeyWrongLastSequenceError(description=f"{key} kept changing under this write")


async def wants_dedicated(js: JetStreamContext, agent: str) -> bool:
    """Does ``agent``'s config, or a tenant's override of it, say ``mode: dedicated``
    (its tasks run only on the agent's own workers)? A deploy then starts them."""
    key = names.config_key(agent)
    try:
        kv = await js.key_value(names.BUCKET_CONFIG)
        entries = [e for pattern in (key, key + ".*")
                   for e in await current_entries(js, kv, names.BUCKET_CONFIG, pattern)]  # fmt: skip
    except (BucketNotFoundError, NotFoundError):  # not provisioned: nothing configured
        return False
    for entry in entries:
        record = _parse(entry.key[len(names.CONFIG_PREFIX) :], entry.value)
        if record is not None and record.config.get("mode") == "dedicated":
            return True
    return False


def _parse(key: str, data: bytes | None) -> ConfigRecord | None:
    if not data:
        return None
    try:
        return ConfigRecord.model_validate_json(data)
    except ValidationError as exc:  # the last good value stays out of reach: say so loudly
        log.error("af_config %s%s is not a config record, ignored: %s", names.CONFIG_PREFIX, key, exc)
        return None


class ConfigWatch(KeyFollower[ConfigRecord | None]):
    """Every agent's config and tenant overrides, followed live (see the module docstring).

    ``on_change(key, record)`` is called on each change (key: ``<agent>`` or
    ``<agent>.<tenant>``); :meth:`merged` and :meth:`check` answer from memory."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        on_change: Callable[[str, ConfigRecord | None], None] | None = None,
        resync_s: float = 30.0,
        name: str = "config",
    ) -> None:
        self._told = on_change
        self.name = name
        self._merged: dict[tuple[str, str], AgentConfig] = {}
        self.converged_revision = 0
        self.converged_at: float | None = None
        super().__init__(
            nc, js, names.BUCKET_CONFIG, names.CONFIG_PREFIX, None, _parse, self._on_change, resync_s
        )

    def _on_change(self, key: str, record: ConfigRecord | None) -> None:
        self._merged.clear()
        if self._told is not None:
            self._told(key, record)

    def note(self, record: ConfigRecord) -> None:
        """``record`` was just written by this process: obey it now, not when its write
        comes back (a caller's next request must see it), unless a later one is known."""
        key = names.config_key(record.agent, record.tenant)[len(names.CONFIG_PREFIX) :]
        known = self.values.get(key)
        if known is None or known.version < record.version:
            self._apply(key, record.model_dump_json().encode())

    def record(self, agent: str, tenant: str | None = None) -> ConfigRecord | None:
        return self.values.get(names.config_key(agent, tenant)[len(names.CONFIG_PREFIX) :])

    def merged(self, agent: str, tenant: str) -> AgentConfig:
        """``agent``'s config for ``tenant``: its own (defaults if none) with the tenant's override on top."""
        found = self._merged.get((agent, tenant))
        if found is None:
            base, top = self.record(agent), self.record(agent, tenant)
            try:
                found = (base.base() if base else AgentConfig()).merged(top.override() if top else None)
            except ValidationError as exc:  # stored by an older build: the defaults, said once per change
                log.error("config of %s for %s is not readable (%s); using the defaults", agent, tenant, exc)
                found = AgentConfig()
            self._merged[(agent, tenant)] = found
        return found

    def check(self, agent: str, tenant: str) -> None:
        """Raise :class:`AgentDisabled` if the kill switch of ``agent`` (or of its ``tenant``) is on."""
        if self.values and not self.merged(agent, tenant).enabled:
            top = self.record(agent, tenant)
            by_tenant = top is not None and top.override().enabled is False
            raise AgentDisabled(agent, tenant, by_tenant)

    def synced(self, reconnected: bool) -> None:
        revision = max(self.revisions.values(), default=0)
        first = self.converged_at is None
        self.converged_revision, self.converged_at = revision, time.time()
        CONFIG_REVISION.set(revision)
        CONFIG_CONVERGED.set(self.converged_at)
        if first or reconnected:
            log.info("%s: config: last converged at revision %d%s", self.name, revision,
                     " (after a reconnect)" if reconnected else "")  # fmt: skip
