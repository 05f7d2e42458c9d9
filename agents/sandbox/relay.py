"""``ctx.call`` from a sandboxed run: the child has no network, so each call travels
as a frame over its call socket to the template, which passes it to the worker; the
worker makes the call as the run's own (:class:`agents.calls.CallSite`: same
idempotency, tenant, trace) and its answer goes back the same way.

The child is not trusted: the worker takes at most :data:`MAX_CALLS_IN_FLIGHT` calls of
one invocation at a time (more are answered with an error), a call frame is at most
:data:`MAX_CALL_FRAME` bytes (the template closes the call socket of a child that sends
a bigger one), and the calls still going when the invocation ends are cancelled (the
callee's run goes on, as after any caller's end). Answers are the callee's recorded
result, bounded as every result is (docs/queue.md, sizes).

Imports nothing of nats: the template and its children load this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import BaseModel

from agents.contract import Calls
from agents.errors import AgentCallError, AgentCallFailed, AgentCallRefused, AgentCallTimedOut
from agents.sandbox.frames import encode, read_frame
from mesh.errors import PermanentError

__all__ = ["MAX_CALLS_IN_FLIGHT", "MAX_CALL_FRAME", "CallRelay", "ChildCalls"]

MAX_CALLS_IN_FLIGHT: Final = 8
MAX_CALL_FRAME: Final = 1024 * 1024  # a call's input is at most half the max payload anyway


def _error_of(exc: BaseException) -> dict[str, Any]:
    """What the child needs to raise the same error class (see :func:`_raised`)."""
    error: dict[str, Any] = {"message": str(exc), "permanent": isinstance(exc, PermanentError)}
    if isinstance(exc, AgentCallFailed):
        error.update(kind="failed", run_id=exc.run_id, run_status=exc.run_status, category=exc.category,
                     detail=exc.error)  # fmt: skip
    elif isinstance(exc, AgentCallTimedOut):
        error.update(kind="timeout", run_id=exc.run_id, timeout_s=exc.timeout_s)
    elif isinstance(exc, AgentCallRefused):
        error.update(kind="refused")
    else:
        error.update(kind="error", message=f"{type(exc).__name__}: {exc}")
    return error


class _CallRefusedHere(AgentCallError, PermanentError):
    """Refused by the worker for a reason other than the callee (permanent)."""


def _raised(agent: str, error: Mapping[str, Any]) -> AgentCallError:
    kind = error.get("kind")
    if kind == "failed":
        return AgentCallFailed(agent, str(error["run_id"]), str(error["run_status"]), str(error["category"]),
                               error.get("detail"))  # fmt: skip
    if kind == "timeout":
        return AgentCallTimedOut(agent, str(error["run_id"]), float(error["timeout_s"]))
    if kind == "refused":
        return AgentCallRefused(str(error["message"]), agent)
    if error.get("permanent"):
        return _CallRefusedHere(str(error["message"]), agent)
    return AgentCallError(str(error["message"]), agent)


class CallRelay:
    """The worker's side, for one invocation: makes the calls its child asks for through
    ``calls`` (the run's call site), in ``context`` (the attempt's: its trace), and
    answers each with ``answer`` (a frame to the template)."""

    def __init__(self, calls: Calls | None, answer: Callable[[dict[str, Any]], None]) -> None:
        self.calls, self.answer = calls, answer
        self.context = contextvars.copy_context()
        self.going: set[asyncio.Task[None]] = set()

    def ask(self, call: Mapping[str, Any]) -> None:
        """Start the call ``call`` (a frame of the child's). Calls start in the order they
        arrive, so the n-th call of the run is numbered n, as in process."""
        if len(self.going) >= MAX_CALLS_IN_FLIGHT:
            too_many = f"at most {MAX_CALLS_IN_FLIGHT} calls at once from one sandboxed run"
            self.answer({"id": call.get("id"), "error": {"kind": "error", "message": too_many}})
            return
        task = self.context.run(asyncio.create_task, self._make(call))
        self.going.add(task)
        task.add_done_callback(self.going.discard)

    async def _make(self, call: Mapping[str, Any]) -> None:
        reply: dict[str, Any] = {"id": call.get("id")}
        try:
            if self.calls is None:
                raise RuntimeError("this worker cannot make calls for its sandboxed runs")
            agent, input = str(call["agent"]), call["input"]
            key = None if call.get("key") is None else str(call["key"])
            priority = None if call.get("priority") is None else int(call["priority"])
            if call.get("op") == "submit":
                reply["run_id"] = await self.calls.submit(agent, input, key=key, priority=priority)
            else:
                timeout_s = float(call.get("timeout_s", 60.0))
                reply["result"] = await self.calls.call(agent, input, timeout_s=timeout_s, key=key,
                                                        priority=priority)  # fmt: skip
        except Exception as exc:
            reply["error"] = _error_of(exc)
        self.answer(reply)

    def close(self) -> None:
        """The invocation ended: what it still waits for is of no use to anyone."""
        for task in self.going:
            task.cancel()


class ChildCalls:
    """The child's side: ``ctx.call`` and ``ctx.submit`` as frames on the call socket."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ids = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.opening: asyncio.Lock | None = None

    async def _open(self) -> asyncio.StreamWriter:
        """The stream on the call socket, made at the first call (a run that makes none builds
        nothing), once: calls made at once share it (two socket objects would both own the fd)."""
        self.opening = self.opening or asyncio.Lock()
        async with self.opening:
            if self.writer is None:
                reader, self.writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self.fd))
                self.reading = asyncio.create_task(self._read(reader))
        return self.writer

    async def _ask(self, call: dict[str, Any]) -> dict[str, Any]:
        writer = await self._open()
        self.ids += 1
        call["id"] = self.ids
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.ids] = future
        writer.write(encode(call))
        await writer.drain()
        return await future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                answer = await read_frame(reader)
                future = self.pending.pop(int(answer.get("id") or 0), None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"the sandbox's call channel closed ({exc!r})"))

    async def call(self, agent: str, input: Mapping[str, Any] | BaseModel, *, timeout_s: float,
                   key: str | None, priority: int | None) -> dict[str, Any]:  # fmt: skip
        call = {"op": "call", "agent": agent, "input": _plain(input), "timeout_s": timeout_s, "key": key,
                "priority": priority}  # fmt: skip
        answer = await self._ask(call)
        if "error" in answer:
            raise _raised(agent, answer["error"])
        result: dict[str, Any] = answer["result"]
        return result

    async def submit(self, agent: str, input: Mapping[str, Any] | BaseModel, *, key: str | None,
                     priority: int | None) -> str:  # fmt: skip
        answer = await self._ask({"op": "submit", "agent": agent, "input": _plain(input), "key": key,
                                  "priority": priority})  # fmt: skip
        if "error" in answer:
            raise _raised(agent, answer["error"])
        return str(answer["run_id"])


def _plain(input: Mapping[str, Any] | BaseModel) -> Any:
    return input.model_dump(mode="json") if isinstance(input, BaseModel) else dict(input)
