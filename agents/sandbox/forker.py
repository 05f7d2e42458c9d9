"""The fork server: the one process that forks invocations, and runs next to no
Python between two forks.

Every ``fork`` write-protects all of the forking process's memory again, so
whatever that process touches afterwards it faults in (and, while the child
lives, copies). The template's manager loop (pipes, clocks, answers, control
groups) touches a lot: forking from it cost about 390 page faults per
invocation. So the template forks this server once, right after importing the
agents, and keeps the loop for itself; the server only

* forks a child when the template sends it a setup (a JSON object, the
  child's four pipe ends and its call socket passed with ``SCM_RIGHTS``) and answers ``P<pid>``
  (the template does not wait for it: its loop goes on);
* reaps its children, each after a ``SIGKILL`` to its process group (until
  the reap the pid, so the group id, cannot be reused) and a read of its
  ``/proc/<pid>/io``, and reports ``E[pid, wait status, cpu s, max RSS kB,
  wchar]``;
* reaps the orphans of invocations (it is their child subreaper).

It dies with the template (``PR_SET_PDEATHSIG``), and its children with it.
When the template closes the socket, it kills what is left of its children,
reaps them and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import traceback
from typing import Any, NamedTuple

from agents.contract import Agent
from agents.sandbox.child import ChildSetup, run_child
from agents.sandbox.invocation import live_children, written_bytes
from agents.sandbox.syscalls import (
    CLONE_NEWPID,
    set_child_subreaper,
    set_name,
    set_parent_death_signal,
    unshare,
)

__all__ = ["Exited", "ForkFailed", "ForkServer", "ForkServerGone", "Forked"]

_FORKED, _EXITED, _FAILED = b"P", b"E", b"X"
# A setup is a few paths; a small buffer: every page the server writes after a fork is a fault.
_MAX_MESSAGE = 8192


class Forked(NamedTuple):
    """The next child asked for is forked."""

    pid: int


class ForkFailed(NamedTuple):
    """The next child asked for could not be forked (``EAGAIN`` under a process limit,
    ``ENOMEM``): the server lives on."""

    error: str


class Exited(NamedTuple):
    """A child ended and is reaped."""

    pid: int
    status: int  # the wait status
    cpu_s: float
    maxrss_kb: int
    wchar: int  # bytes it passed to write(), read before the reap


class ForkServerGone(OSError):
    """The fork server died: nothing more can be forked."""


class ForkServer:
    """The template's handle on its fork server."""

    def __init__(self, pid: int, sock: socket.socket, init_pid: int, pid_namespace_error: str) -> None:
        self.pid = pid
        self.sock = sock
        self.gone = False
        # PID 1 of the invocations' PID namespace (0: none), and why there is none when asked.
        self.init_pid, self.pid_namespace_error = init_pid, pid_namespace_error

    @classmethod
    def start(
        cls, agents: dict[str, Agent[Any, Any]], netns_fd: int | None, close: list[int], pid_namespace: bool
    ) -> ForkServer:
        """Fork the server; ``close`` are descriptors of the template it must not hold. With
        ``pid_namespace`` its children live in a PID namespace of their own (see :func:`_serve`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                for fd in close:
                    os.close(fd)
                _serve(agents, theirs, netns_fd, parent, pid_namespace)
            except BaseException:  # said on the template's stderr (the worker's log)
                traceback.print_exc()
                code = 1
            os._exit(code)
        theirs.close()
        hello = ours.recv(_MAX_MESSAGE)  # N<pid of the namespace's init> or N0 <why none>
        if hello[:1] != b"N":
            ours.close()
            os.waitpid(pid, 0)
            raise ForkServerGone(f"the sandbox's fork server did not start ({hello!r})")
        init, _, error = hello[1:].decode().partition(" ")
        return cls(pid, ours, int(init), error)

    def fork(self, setup: dict[str, Any], fds: list[int]) -> None:
        """Ask for a child forked with ``setup``; its pid comes later, from :meth:`messages`,
        in the order asked (the template does not wait for the fork)."""
        if self.gone:
            raise ForkServerGone("the sandbox's fork server is gone")
        try:
            socket.send_fds(self.sock, [json.dumps(setup).encode()], fds)
        except OSError as exc:
            self.gone = True
            raise ForkServerGone(f"the sandbox's fork server is gone: {exc!r}") from exc

    def messages(self) -> list[Forked | ForkFailed | Exited]:
        """What the server said since the last call, in order. Sets ``gone`` when it
        closed its end."""
        out: list[Forked | ForkFailed | Exited] = []
        while not self.gone:
            try:
                message = self.sock.recv(_MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                message = b""
            if not message:
                self.gone = True
            elif message[:1] == _FORKED:
                out.append(Forked(int(message[1:])))
            elif message[:1] == _FAILED:
                out.append(ForkFailed(message[1:].decode(errors="replace")))
            elif message[:1] == _EXITED:
                pid, status, cpu_s, maxrss_kb, wchar = message[1:].split()
                out.append(Exited(int(pid), int(status), float(cpu_s), int(maxrss_kb), int(wchar)))
        return out

    def close(self) -> None:
        """Tell the server to go (it kills what is left) and wait for it."""
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# -- the server's side


def _serve(
    agents: dict[str, Agent[Any, Any]],
    ctl: socket.socket,
    netns_fd: int | None,
    parent: int,
    pid_namespace: bool,
) -> None:
    set_parent_death_signal()
    if os.getppid() != parent:  # the template died before the line above
        return
    set_child_subreaper()
    init = 0
    if pid_namespace:
        try:
            unshare(CLONE_NEWPID)  # our children, not us: the first one is its PID 1
            init = _start_init()
        except OSError as exc:
            ctl.send(b"N0 " + f"unshare(CLONE_NEWPID) refused: {exc}".encode())
        else:
            ctl.send(b"N%d" % init)
    else:
        ctl.send(b"N0")
    for sig in (signal.SIGTERM, signal.SIGINT):  # the template decides when we stop: it closes ctl
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    ours: set[int] = set()
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                if not _reap(ctl, ours, init):  # the namespace's init died: nothing can be forked
                    _last_rites(ours)
                    return
                continue
            data, fds, _, _ = socket.recv_fds(ctl, _MAX_MESSAGE, 8)
            if not data:
                _last_rites(ours)
                return
            if pid := _fork(agents, json.loads(data), fds, netns_fd, ctl):
                ours.add(pid)


def _fork(agents: dict[str, Agent[Any, Any]], s: dict[str, Any], fds: list[int], netns_fd: int | None,
          ctl: socket.socket) -> int:  # fmt: skip
    setup = ChildSetup(
        workdir=s["workdir"], cgroup_procs=s["cgroup_procs"], pids_cgroup=s["pids_cgroup"],
        netns_fd=netns_fd, uid=s["uid"], pipes=(fds[0], fds[1], fds[2], fds[3], fds[4]),
        network=s["network"], rlimits=tuple((w, soft, hard) for w, soft, hard in s["rlimits"]),
    )  # fmt: skip
    try:
        pid = os.fork()
    except OSError as exc:  # said, not fatal: the running invocations live on
        pid = 0
        ctl.send(_FAILED + f"fork: {exc}".encode())
    else:
        if pid == 0:
            run_child(agents, setup)
        ctl.send(b"%s%d" % (_FORKED, pid))
    finally:
        for fd in fds:
            os.close(fd)
    return pid


def _reap(ctl: socket.socket, ours: set[int], init: int) -> bool:
    """Reap what ended; False once the PID namespace's init is among them."""
    alive = True
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return alive
        if info is None:
            return alive
        pid, wchar = info.si_pid, 0
        alive = alive and pid != init
        if pid in ours:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            wchar = written_bytes(pid)
        _, status, usage = os.wait4(pid, 0)
        if pid in ours:
            ours.discard(pid)
            cpu_s = usage.ru_utime + usage.ru_stime
            with contextlib.suppress(OSError):
                ctl.send(b"%s%d %d %r %d %d" % (_EXITED, pid, status, cpu_s, usage.ru_maxrss, wchar))


def _start_init() -> int:
    """Fork PID 1 of the invocations' namespace: it only reaps. Orphans of invocations are
    reparented to it (a subreaper outside a namespace is not one inside it). When it dies,
    the kernel kills every process of the namespace: with the server (``PR_SET_PDEATHSIG``),
    so a dead template leaves no invocation process, double-forked ones included."""
    alive_r, alive_w = os.pipe()  # the server keeps the write end: EOF means it died
    pid = os.fork()
    if pid:
        os.close(alive_r)
        return pid
    code = 0
    try:
        os.close(alive_w)
        set_parent_death_signal()
        # The server may have died before that line (getppid() says 0 in here: the parent
        # is outside the namespace): then its end of the pipe is closed.
        if select.select([alive_r], [], [], 0)[0]:
            os._exit(0)
        set_name(b"af-pid-init")
        os.closerange(3, 1 << 16)  # nothing of the server's: its socket's EOF must tell the template
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        while True:
            signal.sigwaitinfo({signal.SIGCHLD})
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
    except BaseException:
        code = 1
    os._exit(code)


def _last_rites(ours: set[int]) -> None:
    """The template is done (or gone): nothing of ours may outlive us."""
    for pid in ours:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    for pid in live_children(os.getpid()):  # ours and orphans alike
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return
