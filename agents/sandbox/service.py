"""The worker's side: :class:`Sandbox` owns a template process and sends it invocations.

Example::

    config = SandboxConfig(agents=["agents.examples.noop:NoOp"])
    async with Sandbox(config) as sandbox:
        result = await sandbox.invoke("noop", '{"echo": 1}', RunContext(run_id="r1"))
        result.output, result.audit.error   # {"echo": 1}, None

``replace()`` starts a new template (the agents' code changed) and lets the
old one finish what it runs before it stops.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.contract import Calls, RunContext
from agents.sandbox.audit import InvocationAudit, InvocationResult, SandboxError, SandboxStopped
from agents.sandbox.cgroups import Hierarchy, remove_slots
from agents.sandbox.config import ENV_PREFIXES, InvocationRequest, SandboxConfig
from agents.sandbox.frames import encode, read_frame
from agents.sandbox.levels import Levels, log_levels_once
from agents.sandbox.limits import SandboxLimits
from agents.sandbox.loglines import relog
from agents.sandbox.relay import CallRelay

__all__ = ["Sandbox"]

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


def _config_values(config: Any) -> Any:
    """``ctx.config`` as JSON values (the child parses them into the agent's ``Config`` again)."""
    return config.model_dump(mode="json") if isinstance(config, BaseModel) else config


class _TemplateProcess:
    """One template: its process, its socket, and the invocations waiting for its answers."""

    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, ready: dict[str, Any]) -> None:  # fmt: skip
        self.proc, self.reader, self.writer = proc, reader, writer
        self.levels = Levels.from_dict(ready["levels"])
        self.cgroups = [Path(p) for p in ready["cgroups"]]
        self.tag = str(ready["tag"])
        self.forker_pid = int(ready["forker"])
        self.uids: list[int] = ready["uids"]
        self.workdirs = Path(ready["workdirs"])
        if ready["private_paths"]:
            log.warning(
                "sandbox: after the uid drop, invocations cannot import from %s (import it in the "
                "template: SandboxConfig.preload)",
                ", ".join(ready["private_paths"]),
            )
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.relays: dict[str, CallRelay] = {}  # the running invocations' calls, by request id
        self.reading = asyncio.create_task(self._read_answers(), name=f"sandbox-template-{proc.pid}")

    @classmethod
    async def start(cls, config: SandboxConfig) -> _TemplateProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*config.sys_path, *sys.path[1:]])
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents.sandbox.template", str(theirs.fileno()),
                config.model_dump_json(), stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), env=env,
            )  # fmt: skip
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 26)
        try:
            ready = await asyncio.wait_for(read_frame(reader), _READY_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            writer.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise SandboxError(f"the sandbox template did not start: {exc!r}") from exc
        if not ready.get("ready"):
            writer.close()
            await proc.wait()
            raise SandboxError(f"the sandbox template could not load its agents: {ready.get('error')}")
        return cls(proc, reader, writer, ready)

    async def _read_answers(self) -> None:
        try:
            while True:
                answer = await read_frame(self.reader)
                if answer.get("op") == "call":  # a child's call (agents.sandbox.relay)
                    relay, call = self.relays.get(str(answer.get("invocation"))), answer.get("call")
                    if relay is not None and isinstance(call, dict):
                        relay.ask(call)
                    continue
                future = self.pending.pop(answer["id"], None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(SandboxStopped("the sandbox template stopped"))
            self.pending.clear()
            for relay in self.relays.values():
                relay.close()
            self.relays.clear()

    async def invoke(self, request: InvocationRequest, calls: Calls | None = None) -> dict[str, Any]:
        if self.reading.done():
            raise SandboxStopped("the sandbox template stopped")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request.id] = future

        def answer(reply: dict[str, Any]) -> None:
            if request.id in self.relays:  # else the invocation ended: nobody waits
                self.writer.write(encode({"op": "called", "invocation": request.id, "answer": reply}))

        self.relays[request.id] = CallRelay(calls, answer)  # made here: in the caller's context (its trace)
        self.writer.write(encode({"op": "invoke", "request": request.model_dump(mode="json")}))
        try:
            return await future
        finally:
            if (relay := self.relays.pop(request.id, None)) is not None:
                relay.close()

    def rss_bytes(self) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    async def stop(self) -> None:
        """Let it finish what it runs, then make sure nothing of it is left."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(encode({"op": "stop"}))
            await self.writer.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
            await self.proc.wait()
        self.writer.close()
        await self.reading
        # What a template that crashed (or was killed) could not remove itself:
        hierarchies = [Hierarchy(0, (), path) for path in self.cgroups]
        await asyncio.to_thread(remove_slots, hierarchies, self.tag)
        await asyncio.to_thread(shutil.rmtree, self.workdirs, True)


class Sandbox:
    """Runs invocations of the configured agents, each in a fresh, confined child process."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._template: _TemplateProcess | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._template = await _TemplateProcess.start(self.config)
        log_levels_once(self._template.levels)

    async def stop(self) -> None:
        template, self._template = self._template, None
        if template is not None:
            await template.stop()
        if self._retiring:
            await asyncio.gather(*self._retiring)

    async def replace(self, config: SandboxConfig | None = None) -> None:
        """A new template (with ``config``, by default the same) takes every new invocation;
        the old one finishes those it runs, then stops."""
        fresh = await _TemplateProcess.start(config or self.config)
        self.config = config or self.config
        old, self._template = self._template, fresh
        if old is not None:
            task = asyncio.create_task(old.stop())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @property
    def levels(self) -> Levels:
        """The containment the current template reached (``levels.as_dict()`` for /readyz)."""
        return self._running().levels

    @property
    def template_pid(self) -> int:
        return self._running().proc.pid

    @property
    def forker_pid(self) -> int:
        """The template's fork server: the parent of every invocation's process."""
        return self._running().forker_pid

    def template_rss_bytes(self) -> int:
        return self._running().rss_bytes()

    def _running(self) -> _TemplateProcess:
        if self._template is None:
            raise SandboxStopped("the sandbox is not started")
        return self._template

    def environment(self, names: Iterable[str] = ()) -> dict[str, str]:
        """What an invocation's environment holds: AF_*, OTEL_* and the named variables."""
        wanted = {*self.config.env_names, *names}
        return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in wanted}

    async def invoke(
        self,
        agent: str,
        input: str | bytes | Mapping[str, Any],
        context: RunContext | None = None,
        *,
        limits: SandboxLimits | None = None,
        network: bool = False,
        env_names: Iterable[str] = (),
    ) -> InvocationResult:
        """Run ``agent`` once on ``input`` (JSON text, or a mapping such as a task's
        parsed input) in a fresh child.

        An agent's failure is a result (``result.audit.error``); only the
        sandbox itself failing raises (:class:`SandboxStopped`)."""
        ctx = context or RunContext(run_id=f"{self._prefix}-{next(self._ids)}")
        request = InvocationRequest(
            id=f"{self._prefix}-{next(self._ids)}", agent=agent,
            input=_json_text(input),
            context={"run_id": ctx.run_id, "tenant": ctx.tenant, "attempt": ctx.attempt,
                     "routing_key": ctx.routing_key, "config": _config_values(ctx.config)},
            limits=limits or self.config.limits, network=network, env=self.environment(env_names),
        )  # fmt: skip
        answer = await self._running().invoke(request, ctx._calls)
        # The agent's own log lines, logged here in the caller's context (a run's: its labels).
        relog(answer.get("logs"), answer.get("logs_dropped"), request.id, agent)
        for used in answer.get("tokens") or ():  # what the agent said it spent; it could say anything
            try:
                ctx.report_usage(str(used["model"]), int(used["input_tokens"]), int(used["output_tokens"]))
            except (KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
                log.warning("invocation %s: token usage ignored (%s)", request.id, exc)
        return InvocationResult(
            output=answer["output"],
            error=answer["error"],
            audit=InvocationAudit.model_validate(answer["audit"]),
            stdout=base64.b64decode(answer["stdout"]),
            stderr=base64.b64decode(answer["stderr"]),
            workdir=answer["workdir"],
        )


def _json_text(input: str | bytes | Mapping[str, Any]) -> str:
    if isinstance(input, bytes):
        return input.decode()
    return input if isinstance(input, str) else json.dumps(input)
