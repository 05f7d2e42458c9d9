"""The warm template ("zygote"): ``python -m agents.sandbox.template FD CONFIG``.

It imports the agents once, then forks one confined child per invocation
request arriving on the socket ``FD`` (see :mod:`agents.sandbox.frames`),
reads the child's stdout, stderr and result pipes, enforces its wall clock
(SIGTERM, grace, SIGKILL), reaps it, kills whatever it left behind, removes
its working directory and answers with the result and its audit record.

One thread, one ``selectors`` loop: a hostile invocation only ever costs the
others the time its own events take. The template is a child subreaper, so
processes that an invocation double-forks are reparented here and reaped.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.contract import Agent
from agents.registry import load_agent
from agents.sandbox.audit import ErrorCategory, InvocationAudit
from agents.sandbox.cgroups import CgroupSlot, find_hierarchies, make_slots, remove_slots
from agents.sandbox.child import ChildSetup, run_child
from agents.sandbox.config import InvocationRequest, SandboxConfig
from agents.sandbox.frames import FrameReader, send_frame
from agents.sandbox.levels import Levels, detect_levels
from agents.sandbox.syscalls import empty_netns, set_child_subreaper

__all__ = ["main"]

RESULT_CAP = 64 * 1024 * 1024
DRAIN_S = 2.0  # after the main process exits, how long its pipes and leftovers may take
_OUT, _ERR, _RESULT = range(3)


@dataclass
class Capture:
    """One pipe from the child, kept up to ``cap`` bytes and counted beyond."""

    cap: int
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0
    open: bool = True

    def feed(self, data: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        self.total += len(data)

    def value(self) -> bytes:
        if self.total <= self.cap:
            return bytes(self.kept)
        return bytes(self.kept) + f"\n[truncated: {self.total - self.cap} more bytes]\n".encode()


@dataclass
class Slot:
    index: int
    uid: int | None
    cgroup: CgroupSlot | None
    busy: bool = False


@dataclass
class Running:
    request: InvocationRequest
    slot: Slot
    pid: int
    workdir: str
    network: bool
    started: float
    captures: dict[int, tuple[int, Capture]]  # fd -> (which, capture)
    timed_out: bool = False
    kill_at: float | None = None
    status: int | None = None  # the wait status, once reaped
    cpu_s: float = 0.0
    maxrss_kb: int = 0
    wchar: int = 0
    ended: float = 0.0
    leftovers: int = 0

    @property
    def deadline(self) -> float:
        return self.started + self.request.limits.timeout_s

    def capture(self, which: int) -> Capture:
        for kind, cap in self.captures.values():
            if kind == which:
                return cap
        raise KeyError(which)


def _wchar(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _live_children() -> list[int]:
    """Our children that are not zombies: with the subreaper, every orphan of an invocation."""
    me = os.getpid()
    out = []
    for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(pid))
    return out


def _private_paths() -> list[str]:
    """The import paths a dropped uid cannot read: a lazy import from them fails in the child."""
    out = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        chain = [path, *path.parents]
        if any(p.exists() and not p.stat().st_mode & 0o001 for p in chain if p.is_dir()):
            out.append(entry)
    return out


class Template:
    def __init__(self, config: SandboxConfig, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.agents: dict[str, Agent[Any, Any]] = {}
        for spec in config.agents:
            agent = load_agent(spec)
            self.agents[agent.key] = agent
        for module in config.preload:
            importlib.import_module(module)
        self.levels, self.hierarchies = self._contain()
        self.tag = str(os.getpid())
        root = config.workdir_root or tempfile.gettempdir()
        self.workdir_root = Path(root) / f"af-sandbox-{self.tag}"
        self.workdir_root.mkdir(mode=0o711)
        cgroups = make_slots(self.hierarchies, config.slots, self.tag) if self.hierarchies else []
        # Slot uids are unique to this template (its pid), so RLIMIT_NPROC counts one invocation.
        uid = config.uid_base + os.getpid() * 1000 if self.levels.uid_drop else None
        self.slots = [
            Slot(i, None if uid is None else uid + i, cgroups[i] if cgroups else None)
            for i in range(config.slots)
        ]
        self.waiting: deque[InvocationRequest] = deque()
        self.running: dict[int, Running] = {}  # by pid
        self.by_fd: dict[int, Running] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.frames = FrameReader()

    def _contain(self) -> tuple[Levels, list[Any]]:
        levels = detect_levels()
        hierarchies: list[Any] = []
        if not self.config.use_cgroups:
            levels = levels.without("cgroup", "turned off by the sandbox's config")
        elif levels.cgroup:
            hierarchies, _ = find_hierarchies()
        self.netns_fd: int | None = None
        if not self.config.use_network_namespace:
            levels = levels.without("network_namespace", "turned off by the sandbox's config")
        elif levels.network_namespace:
            try:
                self.netns_fd = empty_netns()
            except OSError as exc:
                levels = levels.without("network_namespace", f"cannot create one: {exc}")
        if levels.uid_drop and not self.config.drop_privileges:
            levels = levels.without("uid_drop", "turned off by the sandbox's config")
        set_child_subreaper()
        return levels, hierarchies

    # -- the loop

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        signal.set_wakeup_fd(wake_w)
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, "control")
        self.selector.register(wake_r, selectors.EVENT_READ, "signal")
        send_frame_blocking(self.sock, {
            "ready": True, "pid": os.getpid(), "levels": self.levels.as_dict(),
            "cgroups": [str(h.path) for h in self.hierarchies], "tag": self.tag,
            "workdirs": str(self.workdir_root),
            "uids": [s.uid for s in self.slots if s.uid is not None],
            "private_paths": _private_paths() if self.levels.uid_drop else [],
        })  # fmt: skip
        while not (self.stopping and not self.running and not self.waiting):
            for key, _ in self.selector.select(self._next_timeout()):
                if key.data == "control":
                    self._read_control()
                elif key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                else:
                    self._read_pipe(key.fd)
            self._reap()
            self._tick()
        self._cleanup()

    def _next_timeout(self) -> float | None:
        if not self.running:
            return None
        now = time.monotonic()
        soonest = min(
            (r.kill_at if r.kill_at is not None else r.deadline) if r.status is None else now + 0.005
            for r in self.running.values()
        )
        return max(0.0, soonest - now)

    def _stop(self) -> None:
        self.stopping = True

    def _read_control(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:  # the worker is gone: nothing will read our answers
            self.stopping = True
            self.waiting.clear()
            for run in self.running.values():
                self._signal(run, signal.SIGKILL)
            self.selector.unregister(self.sock)
            return
        for message in self.frames.feed(data):
            if message.get("op") == "stop":
                self.stopping = True
            elif message.get("op") == "invoke":
                self.waiting.append(InvocationRequest.model_validate(message["request"]))
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self.waiting:
            request = self.waiting[0]
            agent = self.agents.get(request.agent)
            if agent is None:
                self.waiting.popleft()
                self._answer_unstarted(request, f"no agent {request.agent!r} in this sandbox")
                continue
            slot = next((s for s in self.slots if not s.busy), None)
            if slot is None:
                return
            self.waiting.popleft()
            try:
                self._fork(agent, request, slot)
            except Exception as exc:
                slot.busy = False
                self._answer_unstarted(request, f"sandbox could not start the invocation: {exc!r}")

    def _fork(self, agent: Agent[Any, Any], request: InvocationRequest, slot: Slot) -> None:
        slot.busy = True
        workdir = tempfile.mkdtemp(dir=self.workdir_root)
        if slot.uid is not None:
            os.chown(workdir, slot.uid, slot.uid)
        if slot.cgroup is not None:
            slot.cgroup.prepare(request.limits)
        confined = not request.network and self.netns_fd is not None
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
        setup = ChildSetup(
            request=request, workdir=workdir,
            cgroup_procs=slot.cgroup.join_path() if slot.cgroup else [],
            netns_fd=self.netns_fd if confined else None, uid=slot.uid,
            pipes=(pipes[0][1], pipes[1][1], pipes[2][1]),
        )  # fmt: skip
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            run_child(agent, setup)
        caps = (request.limits.output_cap_bytes, request.limits.output_cap_bytes, RESULT_CAP)
        run = Running(request, slot, pid, workdir, not confined, started, {})
        for which, (r, w) in enumerate(pipes):
            os.close(w)
            os.set_blocking(r, False)
            run.captures[r] = (which, Capture(caps[which]))
            self.by_fd[r] = run
            self.selector.register(r, selectors.EVENT_READ, "pipe")
        self.running[pid] = run

    def _read_pipe(self, fd: int) -> None:
        run = self.by_fd[fd]
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if data:
            run.captures[fd][1].feed(data)
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        run = self.by_fd.pop(fd)
        run.captures[fd][1].open = False
        self.selector.unregister(fd)
        os.close(fd)

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            run = self.running.get(info.si_pid)
            if run is not None and run.status is None:
                # Before the reap: until then its pid, so its group id, cannot be reused.
                with contextlib.suppress(OSError):
                    os.killpg(run.pid, signal.SIGKILL)
                run.wchar = _wchar(run.pid)
            _, status, usage = os.wait4(info.si_pid, 0)
            if run is not None and run.status is None:
                run.status, run.ended = status, time.monotonic()
                run.cpu_s = usage.ru_utime + usage.ru_stime
                run.maxrss_kb = usage.ru_maxrss
                run.leftovers = self._sweep(run, signal.SIGKILL)

    def _signal(self, run: Running, sig: int) -> None:
        if run.status is None:
            with contextlib.suppress(OSError):
                os.killpg(run.pid, sig)
        self._sweep(run, sig)

    def _sweep(self, run: Running, sig: int) -> int:
        """Signal what is left of the invocation outside its process group; how many there were."""
        if run.slot.cgroup is not None:
            return run.slot.cgroup.signal_all(sig)
        # Without a control group: orphans (reparented to us) are killed on sight, whichever
        # invocation they came from; nothing may outlive the invocation that started it.
        pids = [pid for pid in _live_children() if pid not in self.running]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        return len(pids)

    def _tick(self) -> None:
        now = time.monotonic()
        for run in list(self.running.values()):
            if run.status is None:
                if run.kill_at is None and now >= run.deadline:
                    run.timed_out, run.kill_at = True, now + run.request.limits.grace_s
                    self._signal(run, signal.SIGTERM)
                elif run.kill_at is not None and now >= run.kill_at:
                    self._signal(run, signal.SIGKILL)
                continue
            pipes_open = any(cap.open for _, cap in run.captures.values())
            left = self._sweep(run, signal.SIGKILL)
            if (pipes_open or left) and now < run.ended + DRAIN_S:
                continue
            for fd in [fd for fd, (_, cap) in run.captures.items() if cap.open]:
                self._drain(fd)
            self._finish(run, left_behind=left)
        self._start_waiting()

    def _drain(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 1 << 16):
                self.by_fd[fd].captures[fd][1].feed(data)
        self._close_pipe(fd)

    # -- answers

    def _finish(self, run: Running, left_behind: int) -> None:
        del self.running[run.pid]
        shutil.rmtree(run.workdir, ignore_errors=True)
        result: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            result = json.loads(bytes(run.capture(_RESULT).kept) or b"{}")
        category, error = self._categorise(run, result)
        if left_behind:
            error = f"{error or ''} ({left_behind} processes would not die: slot {run.slot.index} held)"
        else:
            run.slot.busy = False
        assert run.status is not None
        stdout, stderr = run.capture(_OUT), run.capture(_ERR)
        audit = InvocationAudit(
            invocation_id=run.request.id, agent=run.request.agent,
            exit_status=os.waitstatus_to_exitcode(run.status) if os.WIFEXITED(run.status) else None,
            signal=os.WTERMSIG(run.status) if os.WIFSIGNALED(run.status) else None,
            duration_ms=(run.ended - run.started) * 1000, cpu_ms=run.cpu_s * 1000,
            peak_rss_bytes=run.maxrss_kb * 1024,
            memory_peak_bytes=run.slot.cgroup.memory_peak() if run.slot.cgroup else None,
            bytes_written=run.wchar, stdout_bytes=stdout.total, stderr_bytes=stderr.total,
            network=run.network, leftover_processes=run.leftovers, error=category,
        )  # fmt: skip
        self._answer(run.request.id, result.get("output") if category is None else None, error, audit,
                     stdout.value(), stderr.value())  # fmt: skip

    def _categorise(self, run: Running, result: dict[str, Any]) -> tuple[ErrorCategory | None, str | None]:
        assert run.status is not None
        exited = os.WIFEXITED(run.status) and os.WEXITSTATUS(run.status) == 0
        if exited and "output" in result:
            return None, None
        sig = os.WTERMSIG(run.status) if os.WIFSIGNALED(run.status) else None
        how = f"killed by signal {signal.Signals(sig).name}" if sig else f"exited with {run.status >> 8}"
        limits = run.request.limits
        if run.timed_out:
            return ErrorCategory.TIMEOUT, f"timed out after {limits.timeout_s} s ({how})"
        if sig in (signal.SIGXCPU, signal.SIGXFSZ) or (sig == signal.SIGKILL and run.cpu_s >= limits.cpu_s):
            return ErrorCategory.RESOURCE_EXCEEDED, f"over its CPU or file size limit ({how})"
        if run.slot.cgroup is not None and run.slot.cgroup.limit_hit():
            return ErrorCategory.RESOURCE_EXCEEDED, f"hit its memory or process limit ({how}): " + str(
                result.get("error", "")
            )
        if "category" in result:
            return ErrorCategory(result["category"]), str(result.get("error"))
        return ErrorCategory.INTERNAL_ERROR, f"the invocation {how} without a result"

    def _answer_unstarted(self, request: InvocationRequest, error: str) -> None:
        unknown = request.agent not in self.agents
        category = ErrorCategory.INPUT_ERROR if unknown else ErrorCategory.INTERNAL_ERROR
        audit = InvocationAudit(
            invocation_id=request.id, agent=request.agent, exit_status=None, signal=None,
            duration_ms=0.0, cpu_ms=0.0, peak_rss_bytes=0, memory_peak_bytes=None, bytes_written=0,
            stdout_bytes=0, stderr_bytes=0, network=False, leftover_processes=0, error=category,
        )  # fmt: skip
        self._answer(request.id, None, error, audit, b"", b"")

    def _answer(self, id: str, output: Any, error: str | None, audit: InvocationAudit,
                stdout: bytes, stderr: bytes) -> None:  # fmt: skip
        with contextlib.suppress(OSError):
            send_frame_blocking(self.sock, {
                "id": id, "output": output, "error": error, "audit": audit.model_dump(mode="json"),
                "stdout": base64.b64encode(stdout).decode(), "stderr": base64.b64encode(stderr).decode(),
            })  # fmt: skip

    def _cleanup(self) -> None:
        remove_slots(self.hierarchies, self.tag)
        shutil.rmtree(self.workdir_root, ignore_errors=True)
        if self.netns_fd is not None:
            os.close(self.netns_fd)


def send_frame_blocking(sock: socket.socket, message: dict[str, Any]) -> None:
    """Answers are written whole: the worker reads every frame as it comes."""
    blocking = sock.getblocking()
    sock.setblocking(True)
    try:
        send_frame(sock, message)
    finally:
        sock.setblocking(blocking)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    try:
        template = Template(SandboxConfig.model_validate_json(argv[2]), sock)
    except Exception as exc:
        send_frame_blocking(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    # Everything imported so far is moved out of the collector's sight: a child's
    # collections then do not touch (and copy) the pages it shares with the template.
    gc.collect()
    gc.freeze()
    template.serve()
    return 0


if __name__ == "__main__":
    for entry in SandboxConfig.model_validate_json(sys.argv[2]).sys_path[::-1]:
        sys.path.insert(0, entry)
    sys.exit(main(sys.argv))
