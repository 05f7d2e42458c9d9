"""Budgets and quotas: defined by operators, measured by the metering processor,
obeyed at enqueue.

Everything is in the KV bucket ``af_budgets``:

* ``budget.<id>`` — a :class:`Budget` (an agent's, a tenant's or an agent x
  tenant's spend per hour, day, week or month; soft or hard; thresholds);
* ``quota.<id>`` — a :class:`Quota` (max executions per day, max running at once:
  the latter enforced where tasks start, :mod:`mesh.queue.slots`);
* ``spent.<id>`` — a :class:`Spent`: a hard budget or a quota that is used up
  for the current period, written by the metering processor
  (``streams.processors.metering``) and removed when the period ends.

:class:`SpendGuard` is the enqueue side: a local copy of the ``spent.`` keys
(:class:`~mesh.wire.follow.KeyFollower`: no round trip per task), consulted by
``TaskQueue.enqueue`` and ``enqueue_batch``, which refuse work of a spent
agent or tenant with :class:`BudgetExceeded` (HTTP 402) or
:class:`QuotaExceeded` (HTTP 429). A flag past its ``reset_at`` is ignored
even if nobody removed it (a processor that is down does not block forever).

What is not guaranteed: the spend is measured from *finished* executions, so
work enqueued or running while a budget is crossed still runs (the overshoot
is what was in flight), and a flag reaches each producer within its watch
latency (milliseconds) or, after a disconnect, its resync.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mesh import names
from mesh.errors import MeshError
from mesh.kv import current_entries
from mesh.wire.follow import KeyFollower, raw

__all__ = [
    "BUDGET_PREFIX",
    "MAX_CONCURRENT",
    "QUOTA_PREFIX",
    "SPENT_PREFIX",
    "Budget",
    "BudgetExceeded",
    "Period",
    "Quota",
    "QuotaExceeded",
    "Spent",
    "SpendGuard",
    "put_limit",
    "read_limits",
    "remove_limit",
    "scope_key",
]

log = logging.getLogger(__name__)

BUDGET_PREFIX = "budget."
QUOTA_PREFIX = "quota."
SPENT_PREFIX = "spent."
_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"
_SCOPE = r"^[A-Za-z0-9_-]{1,128}$"
MAX_CONCURRENT = 10_000  # a scope's slots are one KV value: this many holders fit well under 1 MB


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"  # ISO weeks, Monday 00:00 UTC
    MONTH = "month"

    def bounds(self, at: datetime) -> tuple[str, datetime, datetime]:
        """The period holding ``at`` (UTC): its id (``2026-12-03T19``, ``2026-12-03``,
        ``2026-W49``, ``2026-12``), start and end."""
        at = at.astimezone(UTC)
        if self is Period.HOUR:
            start = at.replace(minute=0, second=0, microsecond=0)
            return start.strftime("%Y-%m-%dT%H"), start, start + timedelta(hours=1)
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        if self is Period.DAY:
            return day.strftime("%Y-%m-%d"), day, day + timedelta(days=1)
        if self is Period.WEEK:
            start = day - timedelta(days=day.weekday())
            year, week, _ = start.isocalendar()
            return f"{year}-W{week:02d}", start, start + timedelta(days=7)
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), start, end


def scope_key(agent: str | None, tenant: str | None) -> str:
    """How a scope is named in keys and events: ``agent.<a>``, ``tenant.<t>`` or ``pair.<a>.<t>``."""
    if agent and tenant:
        return f"pair.{agent}.{tenant}"
    if agent:
        return f"agent.{agent}"
    if tenant:
        return f"tenant.{tenant}"
    raise ValueError("a scope needs an agent, a tenant or both")


class _Scoped(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    agent: str | None = Field(default=None, pattern=_SCOPE)
    tenant: str | None = Field(default=None, pattern=_SCOPE)

    @model_validator(mode="after")
    def _scoped(self) -> Any:
        if not (self.agent or self.tenant):
            raise ValueError("give an agent, a tenant or both")
        return self

    @property
    def scope(self) -> str:
        return scope_key(self.agent, self.tenant)


class Budget(_Scoped):
    """Spend allowed per period. Soft: alerts only. Hard: once spent, enqueue refuses
    the scope's new work until the period ends (402). An alert event goes out once
    per period at each threshold (percent of ``limit``)."""

    period: Period = Period.MONTH
    limit: float = Field(gt=0, description="in the price table's currency")
    hard: bool = False
    thresholds: list[int] = Field(default_factory=lambda: [80, 100])

    @field_validator("thresholds")
    @classmethod
    def _percentages(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= p <= 1000 for p in value):
            raise ValueError("thresholds are percentages of the limit, 1 to 1000")
        return sorted(set(value))


class Quota(_Scoped):
    """At most ``max_daily`` executions per UTC day (counted when they finish; refused at
    enqueue once used up) and at most ``max_concurrent`` running at once across the fleet
    (:mod:`mesh.queue.slots`: the rest wait in the queue). At least one of the two."""

    max_daily: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT)

    @model_validator(mode="after")
    def _limits(self) -> Any:
        if self.max_daily is None and self.max_concurrent is None:
            raise ValueError("give max_daily, max_concurrent or both")
        return self


class Spent(BaseModel):
    """A hard budget or a quota used up for its current period (``spent.<id>``)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    kind: Literal["budget", "quota"]
    agent: str | None = None
    tenant: str | None = None
    period: str  # the period's id
    limit: float
    used: float  # spend (currency) or executions
    currency: str | None = None
    reset_at: datetime


class BudgetExceeded(MeshError):
    status = 402

    def __init__(self, spent: Spent) -> None:
        who = scope_key(spent.agent, spent.tenant).replace(".", " ", 1)
        super().__init__(
            f"budget {spent.id!r} of {who} is spent for {spent.period}: {spent.used:.6g} of "
            f"{spent.limit:.6g} {spent.currency or ''}".rstrip()
            + f"; new work is refused until {spent.reset_at.isoformat()}"
        )
        self.spent = spent

    @property
    def details(self) -> dict[str, Any]:
        s = self.spent
        return {"budget": s.id, "period": s.period, "spend": s.used, "limit": s.limit,
                "currency": s.currency, "reset_at": s.reset_at.isoformat()}  # fmt: skip


class QuotaExceeded(MeshError):
    status = 429

    def __init__(self, spent: Spent) -> None:
        who = scope_key(spent.agent, spent.tenant).replace(".", " ", 1)
        super().__init__(
            f"quota {spent.id!r} of {who} is used up for {spent.period}: {int(spent.used)} of "
            f"{int(spent.limit)} executions; new work is refused until {spent.reset_at.isoformat()}"
        )
        self.spent = spent

    @property
    def details(self) -> dict[str, Any]:
        s = self.spent
        return {"quota": s.id, "period": s.period, "executions": int(s.used), "limit": int(s.limit),
                "reset_at": s.reset_at.isoformat()}  # fmt: skip


class SpendGuard:
    """The producer's local copy of what is spent; :meth:`check` raises for spent scopes."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._by_scope: dict[tuple[str | None, str | None], list[Spent]] = {}
        self.mirror = KeyFollower(nc, js, names.BUCKET_BUDGETS, SPENT_PREFIX, None, raw, self._changed)

    async def start(self) -> None:
        await self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()

    def _changed(self, key: str, value: bytes | None) -> None:
        self._by_scope.clear()
        for value in self.mirror.values.values():
            try:
                spent = Spent.model_validate_json(value or b"")
            except ValidationError as exc:  # never let a bad value stop the fleet's work
                log.error("af_budgets spent flag is not readable, ignored: %s", exc)
                continue
            self._by_scope.setdefault((spent.agent, spent.tenant), []).append(spent)

    def spent(self) -> list[Spent]:
        """Every budget and quota seen spent (the current period's or not)."""
        return [s for found in self._by_scope.values() for s in found]

    def check(self, agent: str, tenant: str, now: datetime | None = None) -> None:
        """Raise :class:`BudgetExceeded` or :class:`QuotaExceeded` if ``agent``'s work
        for ``tenant`` may not be enqueued now."""
        if not self._by_scope:
            return
        for scope in ((agent, None), (None, tenant), (agent, tenant)):
            for spent in self._by_scope.get(scope, ()):
                if (now or datetime.now(UTC)) < spent.reset_at:
                    raise BudgetExceeded(spent) if spent.kind == "budget" else QuotaExceeded(spent)


async def put_limit(js: JetStreamContext, limit: Budget | Quota) -> bool:
    """Store a budget or quota (replacing one of the same id); True if it existed."""
    kv = await js.key_value(names.BUCKET_BUDGETS)
    key = (BUDGET_PREFIX if isinstance(limit, Budget) else QUOTA_PREFIX) + limit.id
    try:
        existed = bool((await kv.get(key)).value)
    except KeyNotFoundError:
        existed = False
    await kv.put(key, limit.model_dump_json().encode())
    return existed


async def remove_limit(js: JetStreamContext, kind: Literal["budget", "quota"], ident: str) -> bool:
    """Remove a budget or quota; False if there was none. Its spent mark goes at the
    metering processor's next flush."""
    kv = await js.key_value(names.BUCKET_BUDGETS)
    key = (BUDGET_PREFIX if kind == "budget" else QUOTA_PREFIX) + ident
    try:
        if not (await kv.get(key)).value:
            return False
    except KeyNotFoundError:
        return False
    await kv.delete(key)
    return True


async def read_limits(js: JetStreamContext) -> tuple[list[Budget], list[Quota], dict[str, Spent]]:
    """Every budget and quota, and the spent marks by id."""
    kv = await js.key_value(names.BUCKET_BUDGETS)
    budgets, quotas, spent = [], [], {}
    for entry in await current_entries(js, kv, names.BUCKET_BUDGETS):
        try:
            if entry.key.startswith(BUDGET_PREFIX):
                budgets.append(Budget.model_validate_json(entry.value or b""))
            elif entry.key.startswith(QUOTA_PREFIX):
                quotas.append(Quota.model_validate_json(entry.value or b""))
            elif entry.key.startswith(SPENT_PREFIX):
                mark = Spent.model_validate_json(entry.value or b"")
                spent[mark.id] = mark
        except ValidationError as exc:
            log.error("%s in %s is not readable, left out: %s", entry.key, names.BUCKET_BUDGETS, exc)
    return budgets, quotas, spent
