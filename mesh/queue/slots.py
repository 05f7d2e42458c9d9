"""Concurrency quotas: at most N executions of an agent, a tenant, or an agent x
tenant running at once across the whole fleet, decided where tasks start.

A :class:`~mesh.queue.budgets.Quota` with ``max_concurrent`` (``quota.<id>`` in
``af_budgets``) limits its scope. The slots are in the KV bucket ``af_slots``,
one key per limited scope (``agent.<a>``, ``tenant.<t>``, ``pair.<a>.<t>``):
``{"held": {"<run id>": ["<worker>", <lease end, epoch s>]}}``. A worker claims a
slot of every limited scope of a task by compare-and-set before the task
starts, renews its leases with its heartbeat, and gives them back when the task's
outcome is recorded. A lease not renewed (its worker was killed or stalled)
ends after the agent's ack wait, when the task is redelivered anyway; the
redelivered run takes its own slot over (one run holds one slot, however
often it is delivered).

The dispatch side (:class:`mesh.queue.worker.TaskWorker`) follows the quota
definitions and the slots (:class:`ConcurrencyQuotas`, no round trip per
task when nothing is limited). An agent whose own scope is full has its lanes
paused in every worker (nothing is pulled; tasks wait in the queue); a task
whose tenant's or pair's scope is full waits in the worker that took it (its
ack kept alive) until a slot frees, up to ``limit`` such tasks per scope and
worker, and past that is handed back with a delay, not counted as an attempt.

What is not guaranteed: leases are wall-clock times, so workers' clocks must
agree to well within an ack wait; a worker stalled past its lease (SIGSTOP)
and resumed finishes its task while the redelivered copy may run elsewhere:
one scope can then run limit + 1 for that overlap, as any run is delivered at
least once. A task that waited is not ordered before later ones of its scope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from mesh import names
from mesh.queue.budgets import QUOTA_PREFIX, Quota
from mesh.wire.follow import KeyFollower

__all__ = ["ConcurrencyQuotas", "Holders", "live", "read_slots"]

log = logging.getLogger(__name__)

#: run id -> (worker, lease end in epoch seconds)
Holders = dict[str, tuple[str, float]]
_CAS_ROUNDS = 50  # every worker may race for the last slot of a scope


def _parse_holders(_: str, value: bytes | None) -> Holders:
    if not value:
        return {}
    try:
        held = json.loads(value).get("held", {})
        return {run: (str(worker), float(until)) for run, (worker, until) in held.items()}
    except (ValueError, TypeError, AttributeError) as exc:  # a bad value frees the scope
        log.error("%s holds an unreadable value, taken as empty: %s", names.BUCKET_SLOTS, exc)
        return {}


def _dump(held: Holders) -> bytes:
    return json.dumps({"held": {run: [w, round(until, 3)] for run, (w, until) in held.items()}}).encode()


def live(held: Holders, now: float | None = None) -> Holders:
    """The holders whose lease has not ended."""
    now = time.time() if now is None else now
    return {run: h for run, h in held.items() if h[1] > now}


def _parse_quota(_: str, value: bytes | None) -> Quota | None:
    if not value:
        return None
    try:
        return Quota.model_validate_json(value)
    except ValidationError as exc:  # never let a bad definition stop the fleet's work
        log.error("a quota in %s is not readable, ignored: %s", names.BUCKET_BUDGETS, exc)
        return None


async def read_slots(js: JetStreamContext, scope: str) -> Holders:
    """The live holders of ``scope``'s slots now (for ``quota ls``)."""
    kv = await js.key_value(names.BUCKET_SLOTS)
    try:
        return live(_parse_holders(scope, (await kv.get(scope)).value))
    except KeyNotFoundError:
        return {}


class ConcurrencyQuotas:
    """What a worker knows of concurrency quotas: the limits (``limits[scope]``, the
    lowest when several quotas name one scope) and the slots' holders as last seen
    (``held(scope)``); claims and releases go to the bucket by compare-and-set.
    ``on_change(scope)`` is called when a scope's limit or holders change (``"*"``:
    the limits did). :meth:`start` returns once both are read."""

    def __init__(self, nc: Client, js: JetStreamContext, on_change: Callable[[str], None]) -> None:
        self.js = js
        self.on_change = on_change
        self.limits: dict[str, int] = {}
        self._quotas = KeyFollower(nc, js, names.BUCKET_BUDGETS, QUOTA_PREFIX, None, _parse_quota,
                                   self._quota_changed)  # fmt: skip
        self._slots = KeyFollower(nc, js, names.BUCKET_SLOTS, "", None, _parse_holders, self._slots_changed)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._kv: KeyValue | None = None
        # Changes of each scope waiting for the write under way (see _change).
        self._pending: dict[str, list[tuple[Callable[[Holders], bool], asyncio.Future[bool]]]] = {}
        self._writing: set[str] = set()
        self._written: dict[str, tuple[Holders, int]] = {}  # scope -> (holders, revision) this worker wrote
        self._writers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._quotas.start()
        await self._slots.start()

    async def stop(self) -> None:
        await self._slots.stop()
        await self._quotas.stop()

    # ---- what is known -------------------------------------------------------

    def applicable(self, agent: str, tenant: str) -> list[tuple[str, int]]:
        """The limited scopes a task of ``agent`` for ``tenant`` needs a slot of, in the
        order they are claimed (always the same order: no two tasks hold halves)."""
        if not self.limits:
            return []
        scopes = (f"agent.{agent}", f"pair.{agent}.{tenant}", f"tenant.{tenant}")
        return [(scope, self.limits[scope]) for scope in scopes if scope in self.limits]

    def held(self, scope: str) -> Holders:
        return live(self._slots.values.get(scope, {}))

    def full(self, scope: str) -> bool:
        limit = self.limits.get(scope)
        return limit is not None and len(self.held(scope)) >= limit

    def next_expiry(self, scope: str) -> float | None:
        """When the earliest live lease of ``scope`` ends (epoch seconds), if any."""
        return min((until for _, until in self.held(scope).values()), default=None)

    async def changed(self, scope: str, timeout: float) -> None:
        """Return when ``scope``'s holders or the limits change, or after ``timeout``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(scope, []).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(scope, [])
            if waiter in waiting:
                waiting.remove(waiter)

    def _wake(self, scope: str | None) -> None:
        scopes = list(self._waiters) if scope is None else [scope]
        for name in scopes:
            for waiter in self._waiters.pop(name, []):
                if not waiter.done():
                    waiter.set_result(None)

    def _quota_changed(self, _: str, __: Quota | None) -> None:
        limits: dict[str, int] = {}
        for quota in self._quotas.values.values():
            if quota is not None and quota.max_concurrent is not None:
                limits[quota.scope] = min(limits.get(quota.scope, quota.max_concurrent), quota.max_concurrent)
        if limits != self.limits:
            self.limits = limits
            self._wake(None)
            self.on_change("*")

    def _slots_changed(self, scope: str, _: Holders) -> None:
        self._wake(scope)
        self.on_change(scope)

    # ---- claims ----------------------------------------------------------------

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(names.BUCKET_SLOTS)
        return self._kv

    async def _change(self, scope: str, change: Callable[[Holders], bool]) -> bool:
        """Apply ``change`` to ``scope``'s holders (it edits them in place and says whether
        it got what it asked for). Changes asked for while a write of the scope is out
        are applied together by the next one: one compare-and-set per round trip and
        scope in a worker, however many of its tasks start or finish."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(scope, []).append((change, future))
        if scope not in self._writing:
            self._writing.add(scope)
            task = asyncio.create_task(self._write(scope), name=f"slots-{scope}")
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)
        return await future

    async def _write(self, scope: str) -> None:
        try:
            while batch := self._pending.pop(scope, []):
                try:
                    answers = await self._apply(scope, [change for change, _ in batch])
                except Exception as exc:  # the bucket cannot answer: each asker hears it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._writing.discard(scope)

    async def _apply(self, scope: str, changes: list[Callable[[Holders], bool]]) -> list[bool]:
        kv = await self._bucket()
        for _ in range(_CAS_ROUNDS):
            known = self._written.pop(scope, None)  # what this worker wrote last: no read if still current
            revision: int | None
            if known is not None:
                held, revision = known
            else:
                try:
                    entry = await kv.get(scope)
                    held, revision = _parse_holders(scope, entry.value), entry.revision
                except KeyNotFoundError:
                    held, revision = {}, None
            new = dict(held)
            answers = [change(new) for change in changes]
            if new == held:
                if known is not None:  # nothing to write on what this worker last wrote: read what is stored
                    continue
                return answers
            try:
                if revision is None:
                    written = await kv.create(scope, _dump(new))
                else:
                    written = await kv.update(scope, _dump(new), last=revision)
                self._written[scope] = (new, written)
                return answers
            except KeyWrongLastSequenceError:  # another worker wrote since: again, on its value
                continue
        raise RuntimeError(f"{names.BUCKET_SLOTS} {scope}: no compare-and-set won in {_CAS_ROUNDS} rounds")

    async def claim(self, scope: str, limit: int, run_id: str, worker: str, lease_s: float) -> bool:
        """Take one of ``scope``'s ``limit`` slots for ``run_id`` (its own, if it holds one
        already: a redelivered run); False when all are held."""

        def take(held: Holders) -> bool:
            now = time.time()
            for run in [run for run, (_, until) in held.items() if until <= now]:
                del held[run]  # its lease ended: its worker is gone
            if run_id not in held and len(held) >= limit:
                return False
            held[run_id] = (worker, now + lease_s)
            return True

        return await self._change(scope, take)

    async def release(self, scope: str, run_id: str) -> None:
        """Give ``run_id``'s slot of ``scope`` back."""

        def give(held: Holders) -> bool:
            held.pop(run_id, None)
            return True

        await self._change(scope, give)

    async def renew(self, scope: str, leases: dict[str, float], worker: str) -> None:
        """Extend this worker's leases of ``scope`` to ``leases[run id]`` (epoch seconds)."""

        def extend(held: Holders) -> bool:
            for run_id, until in leases.items():
                holder = held.get(run_id)
                if holder is not None and holder[0] == worker:
                    held[run_id] = (worker, until)
            return True

        await self._change(scope, extend)
