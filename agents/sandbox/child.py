"""What a forked invocation does: confine itself, run the agent once, write
its result on fd 3, exit. Runs only in the child, between ``fork`` and ``_exit``.

A child confines itself completely while it is warm, before any request:
the template forks it for a *profile* (network or not, the rlimits) and
sends it only requests of that profile, so what is left when one comes is
reading it, setting its environment and running the agent.

Order matters: joining the control group and the network namespace and
lowering the limits need root, so dropping to the slot's uid comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import resource
import selectors
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, TypedDict

from pydantic import ValidationError

from agents.contract import Agent, RunContext
from agents.sandbox.audit import ErrorCategory
from agents.sandbox.config import InvocationRequest
from agents.sandbox.invocation import wchar_of
from agents.sandbox.limits import rlimits, set_rlimits
from agents.sandbox.loglines import LineCollector
from agents.sandbox.relay import ChildCalls
from agents.sandbox.syscalls import enter_netns, set_name, set_no_new_privs, set_parent_death_signal
from mesh.errors import PermanentError

#: What ``ps`` shows of a warm child, confined and waiting, and of a running invocation
#: (its descendants inherit the name until they exec).
WARM_NAME, RUN_NAME = b"af-warm", b"af-invocation"

__all__ = ["RUN_NAME", "WARM_NAME", "ChildSetup", "child_request", "classify", "prepare_loop", "run_child"]

RESULT_FD = 3
REQUEST_FD = 4
IO_FD = 5
CALL_FD = 6  # a socket to the template: ctx.call (agents.sandbox.relay)
NETNS_FD = 7
_result_fd = [0]  # where a setup failure is reported: the pipe's first descriptor until dup2
EXIT_SETUP_FAILED = 70

_RESOURCE_ERRNOS = {errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM}
_NETWORK_ERRNOS = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.ETIMEDOUT, errno.EADDRNOTAVAIL, errno.ENETDOWN,
}  # fmt: skip


class ChildRequest(TypedDict):
    """What the template writes down a child's request pipe (plain JSON: parsing it in the
    child costs a ``json.loads``, not a pydantic model's pages). Network and limits are not
    in it: the child was confined for them before (:func:`profile_of`)."""

    id: str
    agent: str
    input: str
    context: dict[str, Any]
    env: dict[str, str]


#: What a warm child is confined for: network or not, and its ``setrlimit`` calls.
Profile = tuple[bool, tuple[tuple[int, int, int], ...]]


def profile_of(request: InvocationRequest, *, pids_cgroup: bool) -> Profile:
    return request.network, tuple(rlimits(request.limits, pids_cgroup=pids_cgroup))


def child_request(request: InvocationRequest) -> bytes:
    """The template's side of :class:`ChildRequest`."""
    return json.dumps({
        "id": request.id, "agent": request.agent, "input": request.input, "context": request.context,
        "env": request.env,
    }).encode()  # fmt: skip


_warm_loop: list[asyncio.AbstractEventLoop] = []


def prepare_loop() -> None:
    """In the template, once: the event loop every child runs its agent on, created (and
    never run) here, so a child does not build one (about 200 page faults, 1 ms). Each
    child gives it a selector and a self-pipe of its own (:func:`_own_loop`)."""
    _warm_loop.append(asyncio.new_event_loop())


def _drop_inherited_loop() -> None:
    """Close this process's copies of the template loop's epoll and self-pipe descriptors
    (before ``closerange``, so no object is left owning a number that gets reused). The
    epoll instance is shared with every other child: nothing is unregistered from it.
    Done first: the descriptors may have the numbers the ``dup2`` calls fill next."""
    if _warm_loop:
        loop: Any = _warm_loop[0]
        loop._selector.close()
        loop._ssock.close()
        loop._csock.close()


def _own_loop() -> asyncio.AbstractEventLoop:
    if not _warm_loop:
        return asyncio.new_event_loop()
    loop: Any = _warm_loop[0]
    loop._selector = selectors.DefaultSelector()
    loop._internal_fds -= 1  # _make_self_pipe counts the new pair; the old one is gone
    loop._make_self_pipe()
    return loop  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ChildSetup:
    """What the template decided for this child before forking it."""

    workdir: str
    cgroup_procs: list[str]
    pids_cgroup: bool  # one of them limits the number of processes
    netns_fd: int | None  # the shared empty one, joined unless the profile allows network
    uid: int | None  # None: keep the template's uid
    pipes: tuple[int, int, int, int, int]  # stdout, stderr, result (write ends), request (read end), call
    network: bool  # its profile: may it reach the network ...
    rlimits: tuple[tuple[int, int, int], ...]  # ... and its limits


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


def _prepare(setup: ChildSetup) -> asyncio.AbstractEventLoop:
    """All of the confinement, done while the child waits for a request (a warm child): its
    group and control group, its descriptors, its directory, its loop, then its profile's
    network namespace and limits and, last, its uid."""
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    set_parent_death_signal()
    os.setsid()  # its own process group: the timeout signals the whole group
    _drop_inherited_loop()
    pid = str(os.getpid()).encode()
    for procs in setup.cgroup_procs:  # a migration is slow (an RCU grace period): done ahead of time
        fd = os.open(procs, os.O_WRONLY)  # not open(): a text file is three objects of five types
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    # Lift every source above the targets first, or one dup2 could overwrite another's source.
    # /proc/self/io is opened while root: after the uid drop a process may not open its own.
    sources = [os.open(os.devnull, os.O_RDONLY), *setup.pipes, os.open("/proc/self/io", os.O_RDONLY)]
    targets = [0, 1, 2, RESULT_FD, REQUEST_FD, CALL_FD, IO_FD]
    if setup.netns_fd is not None:
        sources.append(setup.netns_fd)
        targets.append(NETNS_FD)
    lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in sources]
    for fd, target in zip(lifted, targets, strict=True):
        os.dup2(fd, target)
    _result_fd[0] = RESULT_FD  # the original descriptor is closed below
    os.closerange(max(targets) + 1, 1 << 16)
    os.chdir(setup.workdir)
    os.environ.clear()  # the template emptied its own: nothing to do, unless run elsewhere
    loop = _own_loop()
    _confine(setup)
    _rehearse(loop)
    return loop


async def _nothing() -> None:
    return None


def _rehearse(loop: asyncio.AbstractEventLoop) -> None:
    """Run what every invocation runs once, without an agent, while warm: the pages a
    run touches first (the loop's task and handle machinery, the result's encoding) are
    copied now, not between the request and the answer."""
    loop.run_until_complete(_nothing())
    RunContext(run_id="warm")
    json.dumps({"output": {}, "usage": _usage()}, separators=(",", ":"), default=str)


def _read_request() -> ChildRequest | None:
    """The request, whole (the template closes its end after it); None: retired unused."""
    chunks = []
    while chunk := os.read(REQUEST_FD, 1 << 16):
        chunks.append(chunk)
    os.close(REQUEST_FD)
    return json.loads(b"".join(chunks)) if chunks else None  # type: ignore[no-any-return]


def _confine(setup: ChildSetup) -> None:
    """The profile's namespace and limits, then the uid drop (the rest needs root)."""
    if setup.netns_fd is not None:
        if not setup.network:
            enter_netns(NETNS_FD)
        os.close(NETNS_FD)
    set_rlimits(setup.rlimits)
    if setup.uid is not None:
        os.setgroups([])
        os.setgid(setup.uid)
        os.setuid(setup.uid)
    set_no_new_privs()
    set_parent_death_signal()  # again: setuid cleared it
    os.environ.update(HOME=setup.workdir, TMPDIR=setup.workdir)
    set_name(WARM_NAME)


def _write_result(message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(RESULT_FD, view) :]


def _run(agent: Agent[Any, Any], request: ChildRequest, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    try:
        parsed = agent.Input.model_validate_json(request["input"])
    except ValidationError as exc:
        return {"category": ErrorCategory.INPUT_ERROR, "error": f"invalid input for {agent.key}: {exc}"}
    tokens: list[dict[str, Any]] = []  # RunContext.report_usage, checked by the worker

    def report_usage(model: str, input_tokens: int, output_tokens: int) -> None:
        tokens.append({"model": model, "input_tokens": input_tokens, "output_tokens": output_tokens})

    context = dict(request["context"])
    config = context.pop("config", None) or {}
    if agent.Config is not None:  # as the worker parsed it: the agent reads its own model
        try:
            config = agent.Config.model_validate(config)
        except ValidationError as exc:
            return {
                "category": ErrorCategory.INPUT_ERROR,
                "error": f"config of {agent.key} does not fit: {exc}",
            }
    ctx = RunContext(**context, config=config, _usage=report_usage, _calls=ChildCalls(CALL_FD))
    try:  # the loop is not closed: the process exits right after
        output = loop.run_until_complete(agent.run(parsed, ctx))
    except Exception as exc:
        return {"category": classify(exc), "error": f"{type(exc).__name__}: {exc}", "tokens": tokens}
    try:
        checked = agent.Output.model_validate(output, from_attributes=True)
    except ValidationError as exc:
        error = f"{agent.key} returned bad output: {exc}"
        return {"category": ErrorCategory.INTERNAL_ERROR, "error": error, "tokens": tokens}
    return {"output": checked.model_dump(mode="json"), "tokens": tokens}


def run_child(agents: dict[str, Agent[Any, Any]], setup: ChildSetup) -> NoReturn:
    code = 0
    pid = os.getpid()
    try:
        try:
            loop = _prepare(setup)
            lines = LineCollector.install()  # while warm: the request waits for nothing
            request = _read_request()
            if request is None:
                os._exit(0)
            set_name(RUN_NAME)
            os.environ.update(request["env"], AF_INVOCATION_ID=request["id"])
            if "HOME" in request["env"] or "TMPDIR" in request["env"]:  # set while warm: its own
                os.environ.update(HOME=setup.workdir, TMPDIR=setup.workdir)
            agent = agents[request["agent"]]
        except BaseException as exc:
            failed = {"category": ErrorCategory.INTERNAL_ERROR, "error": f"sandbox setup: {exc!r}"}
            os.write(_result_fd[0] or setup.pipes[2], json.dumps(failed).encode())
            os._exit(EXIT_SETUP_FAILED)
        message = _run(agent, request, loop)
        if os.getpid() != pid:  # a process the agent forked came back through here: only we answer
            os._exit(1)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        message["usage"] = _usage()
        message.update(lines.carried())
        _write_result(message)
        # Closing every pipe tells the template the result is whole: unless a descendant holds
        # one, it answers now, not after this exit (which unmaps the whole interpreter).
        os.closerange(1, RESULT_FD + 1)  # one close_range(2): the template sees all three EOFs at once
    except BaseException:
        code = 1
    os._exit(code)


def _usage() -> dict[str, float]:
    """What this process used so far, as the audit reports it (its exit comes right after)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wchar = 0
    with contextlib.suppress(OSError):
        wchar = wchar_of(os.pread(IO_FD, 4096, 0))
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss, "wchar": wchar}
