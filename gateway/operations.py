"""Long operations run in the background of a gateway, recorded in PostgreSQL.

A route that starts a long piece of work (a deploy, a drain, replaying many dead
letters) answers ``202 Accepted`` at once with an operation
(:mod:`agents.store.operations`); :class:`OperationRunner` runs it here as an
asyncio task and writes its progress and history as it goes. What each kind of
operation does is an :class:`OperationKind`, registered on the runner: adding one
is a work function and one registration.

Guarantee: an operation ends ``succeeded``, ``failed`` or ``cancelled``, never
stays ``running`` for good. Its gateway heartbeats it; when that stops (the
process killed), any gateway takes it over within ``stale_s`` — at start, then
at every heartbeat — and resumes it if its kind is safe to run again from the
start (:attr:`OperationKind.resumable`), else fails it with the reason. A
gateway that stops in order hands back the resumable ones and fails the rest.
Cancellation is cooperative: the work stops at its next :meth:`OperationContext.progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from agents.errors import AgentError
from agents.store.operations import (
    Operation,
    OperationLost,
    OperationStatus,
    advance,
    claim_abandoned,
    create_operation,
    heartbeat,
    prune_finished,
    release,
    request_cancel,
)
from agents.store.tenancy import ALL_TENANTS, tenant_scope

__all__ = [
    "OperationCancelled",
    "OperationContext",
    "OperationFailed",
    "OperationKind",
    "OperationRunner",
    "UnknownKind",
]

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 3  # a resumable operation started this often is given up (it may be what kills us)
_WRITE_EVERY_S: Final = 0.25  # progress alone is written at most this often
_DATABASE_AWAY: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
PRUNE_EVERY_S: Final = 3600.0  # finished operations past their keep are deleted this often


class OperationCancelled(Exception):
    """Raised into the work at its next step once its cancellation was asked."""


class OperationFailed(Exception):
    """The work ended without doing what was asked (``result``: what it did do)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class UnknownKind(AgentError):
    status = 500


@dataclass(frozen=True)
class OperationKind:
    """One kind of long operation: its work, and whether it is safe to run again
    from the start after its gateway died midway."""

    name: str
    work: Callable[[OperationContext], Awaitable[Any]]  # returns the result (JSON)
    resumable: bool = False
    not_resumable: str = "it is not run again after an interruption"  # the reason, when not resumable


class OperationContext:
    """What the work of one operation sees: its row, and a way to report progress
    (which is also where a cancellation reaches it)."""

    def __init__(self, runner: OperationRunner, op: Operation) -> None:
        self.runner, self.op = runner, op
        self.cancel_requested = op.cancel_requested_at is not None
        self._said = (op.progress, op.message)
        self._written_at = 0.0

    async def progress(
        self, percent: float | None = None, message: str | None = None, *, cancellable: bool = True
    ) -> None:
        """Record how far it got (0-100) and what it does now; raises
        :class:`OperationCancelled` when its cancellation was asked (unless the work
        says it cannot stop here). A new message or a whole percent more is a
        history event; progress alone is written at most every 0.25 s."""
        if self.cancel_requested and cancellable:
            raise OperationCancelled(self.op.message)
        percent = self._said[0] if percent is None else min(max(percent, 0.0), 100.0)
        message = self._said[1] if message is None else message
        event = message != self._said[1] or int(percent) != int(self._said[0])
        now = time.monotonic()
        if not event and (percent == self._said[0] or now - self._written_at < _WRITE_EVERY_S):
            return
        self.op = await self.runner._write(self.op.id, progress=percent, message=message, event=event)
        self._said, self._written_at = (percent, message), now


class OperationRunner:
    """Runs this gateway's operations and keeps them alive; takes over the ones
    of gateways that stopped (see the module docstring)."""

    def __init__(
        self, pool: asyncpg.Pool, holder: str, *, heartbeat_s: float = 2.0, stale_s: float = 15.0,
        keep_s: float = 30 * 86400.0, prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:  # fmt: skip
        """``keep_s``: how long a finished operation (its history, its idempotency key)
        is kept; deleted at start and every ``prune_every_s`` after that."""
        self.pool, self.holder = pool, holder
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.keep_s, self.prune_every_s = keep_s, prune_every_s
        self._pruned_at = 0.0  # monotonic; 0: not yet
        self.kinds: dict[str, OperationKind] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._contexts: dict[str, OperationContext] = {}
        self._changed = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        # Ends that could not be written (the database away): written again at every
        # heartbeat, which meanwhile keeps them ours, so none stays "running" for good.
        self._unwritten: dict[str, dict[str, Any]] = {}

    def register(self, *kinds: OperationKind) -> None:
        for kind in kinds:
            self.kinds[kind.name] = kind

    async def start(self) -> None:
        """Take over what stopped gateways left, then keep ours alive."""
        await self.sweep()
        await self.prune()
        self._keeper = asyncio.create_task(self._keep_alive(), name="operations-heartbeat")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop running: the resumable operations are handed back (queued, for the
        next gateway), the others failed with the reason."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.wait([self._keeper], timeout=grace_s)
        running = dict(self._tasks)
        for task in running.values():
            task.cancel()
        if running:
            await asyncio.wait(running.values(), timeout=grace_s)
        for op_id, task in running.items():
            ctx = self._contexts.pop(op_id, None)
            kind = self.kinds.get(ctx.op.kind) if ctx else None
            with contextlib.suppress(OperationLost, *_DATABASE_AWAY):
                if kind is not None and kind.resumable:
                    said = f"gateway {self.holder} stopped: queued again"
                    async with tenant_scope(self.pool, ALL_TENANTS) as conn:
                        await release(conn, op_id, self.holder, said)
                elif task.cancelled():
                    await self._fail(op_id, f"gateway {self.holder} stopped while it ran; "
                                     f"{kind.not_resumable if kind else ''}")  # fmt: skip
        self._tasks.clear()

    # ---- asked by the API ------------------------------------------------------

    async def submit(
        self, kind: str, *, target: str, request: dict[str, Any], tenant: str | None, created_by: str,
        idempotency_key: str | None = None,
    ) -> tuple[Operation, bool]:  # fmt: skip
        """A new operation started here, and True; or the one ``idempotency_key``
        already names, and False (see :func:`~agents.store.operations.create_operation`)."""
        if kind not in self.kinds:
            raise UnknownKind(f"this gateway runs no operation of kind {kind!r}")
        async with tenant_scope(self.pool, tenant) as conn:
            op, new = await create_operation(
                conn, kind=kind, target=target, tenant=tenant, request=request, created_by=created_by,
                owner=self.holder, idempotency_key=idempotency_key,
            )  # fmt: skip
        if new:
            self._launch(op, "started")
        return op, new

    async def cancel(self, op_id: str, tenant: str | None) -> Operation:
        """Ask ``op_id`` to stop (whichever gateway runs it: that one reads it at its heartbeat)."""
        async with tenant_scope(self.pool, tenant) as conn:
            op = await request_cancel(conn, op_id)
        ctx = self._contexts.get(op_id)
        if ctx is not None:
            ctx.cancel_requested = True
        self._notify()
        return op

    async def changed(self, timeout: float) -> None:
        """Return when an operation of this gateway wrote something, or after ``timeout`` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # ---- running ---------------------------------------------------------------

    def _launch(self, op: Operation, note: str) -> None:
        self._contexts[op.id] = OperationContext(self, op)
        self._tasks[op.id] = asyncio.create_task(self._run(op.id, note), name=f"operation:{op.id}")

    async def _run(self, op_id: str, note: str) -> None:
        ctx = self._contexts[op_id]
        kind = self.kinds[ctx.op.kind]
        try:
            ctx.op = await self._write(op_id, status=OperationStatus.RUNNING, message=note)
            await ctx.progress()  # a cancellation asked before it started
            result = await kind.work(ctx)
            await self._finish_quietly(op_id, status=OperationStatus.SUCCEEDED, progress=100.0, result=result,
                                       message="succeeded")  # fmt: skip
        except OperationCancelled:
            said = f"cancelled at {ctx.op.progress:.0f}%; what was done stays done ({ctx.op.message})"
            await self._finish_quietly(op_id, status=OperationStatus.CANCELLED, message=said)
        except OperationFailed as exc:
            await self._fail(op_id, str(exc), result=exc.result)
        except OperationLost:
            log.warning("operation %s was taken over by another gateway", op_id)
        except asyncio.CancelledError:
            raise  # stop() or the process going away: stop() or the next sweep says what became of it
        except Exception as exc:
            why = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AgentError):
                log.exception("operation %s (%s) failed", op_id, kind.name)
            await self._fail(op_id, why)
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self._tasks.pop(op_id, None)
                self._contexts.pop(op_id, None)

    async def _fail(self, op_id: str, why: str, **what: Any) -> None:
        await self._finish_quietly(op_id, status=OperationStatus.FAILED, error=why, message=f"failed: {why}",
                                   **what)  # fmt: skip

    async def _finish_quietly(self, op_id: str, **what: Any) -> None:
        """Write an operation's end; if the database is away, again at each heartbeat."""
        try:
            await self._write(op_id, **what)
        except OperationLost:
            log.warning("operation %s was taken over by another gateway before it ended here", op_id)
        except _DATABASE_AWAY as exc:
            log.warning("operation %s ended but could not be recorded (%s); trying again", op_id, exc)
            self._unwritten[op_id] = what

    async def _write(self, op_id: str, **what: Any) -> Operation:
        async with tenant_scope(self.pool, ALL_TENANTS) as conn:
            op = await advance(conn, op_id, self.holder, **what)
        self._notify()
        return op

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- staying alive, taking over --------------------------------------------

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
                for op_id, what in list(self._unwritten.items()):
                    del self._unwritten[op_id]
                    await self._finish_quietly(op_id, **what)
                await self.sweep()
                if time.monotonic() - self._pruned_at >= self.prune_every_s:
                    await self.prune()
            except _DATABASE_AWAY as exc:  # next beat
                log.warning("operations heartbeat: %s", exc)

    async def _beat(self) -> None:
        async with tenant_scope(self.pool, ALL_TENANTS) as conn:
            owned = await heartbeat(conn, self.holder)
        for op_id, task in list(self._tasks.items()):
            if op_id not in owned and not task.done():  # another gateway took it over: ours is stale
                log.warning("operation %s is no longer ours; stopping its work here", op_id)
                task.cancel()
                self._tasks.pop(op_id, None)
                self._contexts.pop(op_id, None)
            elif owned.get(op_id) and (ctx := self._contexts.get(op_id)) is not None:
                ctx.cancel_requested = True

    async def prune(self) -> int:
        """Delete the operations that finished more than ``keep_s`` ago (with their
        history and idempotency keys): a retry with such a key starts a new operation."""
        deleted = 0
        while True:
            async with tenant_scope(self.pool, ALL_TENANTS) as conn:
                done = await prune_finished(conn, self.keep_s)
            deleted += done
            if done < 10_000:
                break
        self._pruned_at = time.monotonic()
        if deleted:
            log.info("operations: deleted %d finished more than %.0f days ago", deleted, self.keep_s / 86400)
        return deleted

    async def sweep(self) -> list[str]:
        """Take over the operations of gateways that stopped heartbeating: resume
        or fail each (module docstring); returns the ids taken."""
        async with tenant_scope(self.pool, ALL_TENANTS) as conn:
            claimed = await claim_abandoned(conn, self.holder, self.stale_s)
        for op, previous in claimed:
            what = f"gateway {previous} stopped while it ran" if previous else "its gateway handed it back"
            kind = self.kinds.get(op.kind)
            if op.cancel_requested_at is not None:
                said = f"cancelled: {what}, after its cancellation was asked"
                await self._finish_quietly(op.id, status=OperationStatus.CANCELLED, message=said)
            elif kind is None:
                await self._fail(op.id, f"{what}; this gateway runs no operation of kind {op.kind!r}")
            elif not kind.resumable:
                await self._fail(op.id, f"{what}; {kind.not_resumable}")
            elif op.attempts >= MAX_ATTEMPTS:
                await self._fail(op.id, f"{what}; it was started {op.attempts} times already: given up")
            else:
                self._launch(op, f"resumed by {self.holder}: {what}")
        return [op.id for op, _ in claimed]
