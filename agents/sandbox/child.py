"""What a forked invocation does: confine itself, run the agent once, write
its result on fd 3, exit. Runs only in the child, between ``fork`` and ``_exit``.

Order matters: joining the control group and the network namespace and
lowering the limits need root, so dropping to the slot's uid comes last.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from agents.contract import Agent, RunContext
from agents.sandbox.audit import ErrorCategory
from agents.sandbox.config import InvocationRequest
from agents.sandbox.limits import apply_rlimits
from agents.sandbox.syscalls import enter_netns, set_no_new_privs, set_parent_death_signal
from mesh.queue.worker import PermanentError

__all__ = ["ChildSetup", "classify", "run_child"]

RESULT_FD = 3
EXIT_SETUP_FAILED = 70

_RESOURCE_ERRNOS = {errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM}
_NETWORK_ERRNOS = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.ETIMEDOUT, errno.EADDRNOTAVAIL, errno.ENETDOWN,
}  # fmt: skip


@dataclass(frozen=True)
class ChildSetup:
    """What the template decided for this child before forking it."""

    request: InvocationRequest
    workdir: str
    cgroup_procs: list[str]
    netns_fd: int | None  # None: stay in the template's network namespace
    uid: int | None  # None: keep the template's uid
    pipes: tuple[int, int, int]  # stdout, stderr, result (write ends)


def classify(exc: BaseException) -> ErrorCategory:
    """The category of what an agent raised (its causes count too)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ValidationError | PermanentError):
            return ErrorCategory.INPUT_ERROR
        if isinstance(seen, MemoryError | RecursionError):
            return ErrorCategory.RESOURCE_EXCEEDED
        if isinstance(seen, BlockingIOError):  # EAGAIN: fork under RLIMIT_NPROC or pids.max
            return ErrorCategory.RESOURCE_EXCEEDED
        if isinstance(seen, OSError) and seen.errno in _RESOURCE_ERRNOS:
            return ErrorCategory.RESOURCE_EXCEEDED
        if isinstance(seen, ConnectionError | socket.gaierror | socket.timeout):
            return ErrorCategory.DEPENDENCY_FAILURE
        if isinstance(seen, OSError) and seen.errno in _NETWORK_ERRNOS:
            return ErrorCategory.DEPENDENCY_FAILURE
        seen = seen.__cause__ or seen.__context__
    return ErrorCategory.INTERNAL_ERROR


def _confine(setup: ChildSetup) -> None:
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    os.setsid()  # its own process group: the timeout signals the whole group
    pid = str(os.getpid())
    for procs in setup.cgroup_procs:
        with open(procs, "w") as f:
            f.write(pid)
    if setup.netns_fd is not None:
        enter_netns(setup.netns_fd)
    apply_rlimits(setup.request.limits)
    out, err, result = setup.pipes
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.dup2(result, RESULT_FD)
    os.closerange(RESULT_FD + 1, 1 << 16)
    os.chdir(setup.workdir)
    if setup.uid is not None:
        os.setgroups([])
        os.setgid(setup.uid)
        os.setuid(setup.uid)
    set_no_new_privs()
    set_parent_death_signal()  # after setuid, which clears it
    os.environ.clear()
    os.environ.update(setup.request.env)
    os.environ.update(HOME=setup.workdir, TMPDIR=setup.workdir, AF_INVOCATION_ID=setup.request.id)


def _write_result(message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(RESULT_FD, view) :]


def _run(agent: Agent[Any, Any], request: InvocationRequest) -> dict[str, Any]:
    try:
        parsed = agent.Input.model_validate_json(request.input)
    except ValidationError as exc:
        return {"category": ErrorCategory.INPUT_ERROR, "error": f"invalid input for {agent.key}: {exc}"}
    ctx = RunContext(**request.context)
    loop = asyncio.new_event_loop()
    try:
        output = loop.run_until_complete(agent.run(parsed, ctx))
    except Exception as exc:
        return {"category": classify(exc), "error": f"{type(exc).__name__}: {exc}"}
    finally:
        loop.close()
    try:
        checked = agent.Output.model_validate(output, from_attributes=True)
    except ValidationError as exc:
        return {"category": ErrorCategory.INTERNAL_ERROR, "error": f"{agent.key} returned bad output: {exc}"}
    return {"output": checked.model_dump(mode="json")}


def run_child(agent: Agent[Any, Any], setup: ChildSetup) -> NoReturn:
    code = 0
    pid = os.getpid()
    try:
        try:
            _confine(setup)
        except BaseException as exc:
            failed = {"category": ErrorCategory.INTERNAL_ERROR, "error": f"sandbox setup: {exc!r}"}
            os.write(setup.pipes[2], json.dumps(failed).encode())
            os._exit(EXIT_SETUP_FAILED)
        message = _run(agent, setup.request)
        if os.getpid() != pid:  # a process the agent forked came back through here: only we answer
            os._exit(1)
        _write_result(message)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:
        code = 1
    os._exit(code)
