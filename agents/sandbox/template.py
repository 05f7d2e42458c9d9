"""The warm template ("zygote"): ``python -m agents.sandbox.template FD CONFIG``.

It imports the agents once, forks its fork server
(:mod:`agents.sandbox.forker`), then has one confined child forked per
invocation request arriving on the socket ``FD`` (see
:mod:`agents.sandbox.frames`), reads the child's stdout, stderr and result pipes, enforces its wall clock
(SIGTERM, grace, SIGKILL), reaps it, kills whatever it left behind, removes
its working directory and answers with the result and its audit record.

One thread, one ``selectors`` loop: a hostile invocation only ever costs the
others the time its own events take. The fork server is the children's parent
and subreaper: it reaps them (processes an invocation double-forks too) and
reports each exit here. The template itself never forks after its start, so
its loop does not fault in (and copy) its own pages again after every fork.

Each free slot holds a *warm* child: forked, in its control group, with its
descriptors, directory and event loop ready, waiting for a request. What is
left once the request is known (network namespace, rlimits, uid, environment)
is a handful of system calls, so an invocation does not wait for a fork or a
control-group migration.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import importlib
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from agents.contract import Agent
from agents.registry import load_agent
from agents.sandbox.audit import ErrorCategory, InvocationAudit
from agents.sandbox.cgroups import Hierarchy, find_hierarchies, make_slots, remove_slots, stale_tags
from agents.sandbox.child import Profile, child_request, prepare_loop, profile_of
from agents.sandbox.config import InvocationRequest, SandboxConfig
from agents.sandbox.forker import Exited, Forked, ForkFailed, ForkServer, ForkServerGone
from agents.sandbox.frames import FrameReader, encode, send_frame
from agents.sandbox.invocation import (
    ERR,
    OUT,
    RESULT,
    Capture,
    Invocation,
    Slot,
    audit_of,
    live_children,
    private_paths,
    unstarted_audit,
    verdict,
)
from agents.sandbox.levels import Levels, detect_levels
from agents.sandbox.limits import rlimits
from agents.sandbox.loglines import take_worker_level
from agents.sandbox.syscalls import empty_netns, set_child_subreaper, trim_heap

__all__ = ["main"]

RESULT_CAP = 64 * 1024 * 1024
DRAIN_S = 2.0  # after the main process exits, how long its pipes and leftovers may take
MAX_CALL_BACKLOG = 16 * 1024 * 1024  # answers to a child's calls it has not read yet


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
        root = Path(config.workdir_root or tempfile.gettempdir())
        self._remove_stale(root)
        self.workdir_root = root / f"af-sandbox-{self.tag}"
        self.workdir_root.mkdir(mode=0o711)
        cgroups = make_slots(self.hierarchies, config.slots, self.tag) if self.hierarchies else []
        # Slot uids are unique to this template (its pid), so RLIMIT_NPROC counts one invocation.
        uid = config.uid_base + os.getpid() * 1000 if self.levels.uid_drop else None
        self.slots = [
            Slot(i, None if uid is None else uid + i, cgroups[i] if cgroups else None)
            for i in range(config.slots)
        ]
        # Requests not yet given to a child, each with the profile it needs (computed once).
        self.waiting: deque[tuple[InvocationRequest, Profile]] = deque()
        self.children: dict[int, Invocation] = {}  # by pid: warm and running
        self.forking: deque[Invocation] = deque()  # asked of the fork server, pid not yet known
        self.exits: list[Exited] = []  # reported by the fork server, not yet taken
        # Without a control group: pids signalled as orphans while forks were in flight (one
        # may have been a child forked an instant before the server said so).
        self.swept: set[int] = set()
        self.by_fd: dict[int, Invocation] = {}
        self.by_call: dict[int, Invocation] = {}  # by the fd of the template's end of its call socket
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.frames = FrameReader()
        self.forker: ForkServer | None = None
        self._pids_cgroup = "pids" in self.levels.cgroup_controllers
        # What idle slots are warmed for: the sandbox's default limits, no network.
        self.default_profile: Profile = (False, tuple(rlimits(config.limits, pids_cgroup=self._pids_cgroup)))

    def start_forker(self) -> None:
        """Fork the fork server (once everything it will copy is imported and frozen)."""
        close = [self.sock.fileno(), self.selector.fileno()]
        self.forker = ForkServer.start(self.agents, self.netns_fd, close, self.levels.pid_namespace)
        if self.levels.pid_namespace and not self.forker.init_pid:
            self.levels = self.levels.without("pid_namespace", self.forker.pid_namespace_error)

    def _remove_stale(self, root: Path) -> None:
        """What templates killed before their cleanup left: empty control groups (a group
        that still holds a process is left alone) and working directories."""
        for h in self.hierarchies:
            for tag in stale_tags(h.path):
                base = h.path / f"af-sandbox-{tag}"
                for path in [*base.glob("slot-*"), base]:
                    with contextlib.suppress(OSError):
                        path.rmdir()
        for tag in stale_tags(root):
            shutil.rmtree(root / f"af-sandbox-{tag}", ignore_errors=True)

    def _contain(self) -> tuple[Levels, list[Hierarchy]]:
        levels = detect_levels()
        hierarchies: list[Hierarchy] = []
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
        if levels.pid_namespace and not self.config.use_pid_namespace:
            levels = levels.without("pid_namespace", "turned off by the sandbox's config")
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
        assert self.forker is not None
        self.selector.register(self.forker.sock, selectors.EVENT_READ, "forker")
        send_frame(self.sock, {
            "ready": True, "pid": os.getpid(), "forker": self.forker.pid, "levels": self.levels.as_dict(),
            "cgroups": [str(h.path) for h in self.hierarchies], "tag": self.tag,
            "workdirs": str(self.workdir_root),
            "uids": [s.uid for s in self.slots if s.uid is not None],
            "private_paths": private_paths() if self.levels.uid_drop else [],
        })  # fmt: skip
        while not (self.stopping and not self.children and not self.forking and not self.waiting):
            # Warm children are forked when nothing else waits, one per turn of the loop.
            unwarmed = self._unwarmed()
            events = self.selector.select(0 if unwarmed else self._next_timeout())
            if not events and unwarmed:
                with contextlib.suppress(ForkServerGone):  # then the template stops
                    self._warm(unwarmed, self.default_profile)
            for key, mask in events:
                if key.data == "call":
                    self._on_call_socket(key.fd, mask)
                elif key.data == "control":
                    self._read_control()
                elif key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                elif key.data == "forker":
                    pass  # forks and exits: read right below, as after every turn
                else:
                    self._read_pipe(key.fd)
            self._reap()
            self._tick()
        self._cleanup()

    def _next_timeout(self) -> float | None:
        busy = [c for c in self.children.values() if c.request is not None]
        if not busy:
            return None
        now = time.monotonic()
        soonest = min(
            (c.kill_at if c.kill_at is not None else c.deadline) if c.status is None else now + 0.005
            for c in busy
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
            for child in self.children.values():
                self._signal(child, signal.SIGKILL)
            self.selector.unregister(self.sock)
            return
        for message in self.frames.feed(data):
            if message.get("op") == "stop":
                self.stopping = True
            elif message.get("op") == "called":
                self._answer_call(str(message["invocation"]), message["answer"])
            elif message.get("op") == "invoke":
                request = InvocationRequest.model_validate(message["request"])
                self.waiting.append((request, profile_of(request, pids_cgroup=self._pids_cgroup)))
        self._start_waiting()

    # -- children: warm, then running

    def _start_waiting(self) -> None:
        while self.waiting:
            request, profile = self.waiting[0]
            if request.agent not in self.agents:
                self.waiting.popleft()
                self._answer_unstarted(request, f"no agent {request.agent!r} in this sandbox")
                continue
            # The longest-waiting warm child of the request's profile is surely done preparing.
            warm = [c for c in self._idle() if c.profile == profile]
            if not warm:
                try:
                    self._make_room(profile)
                except Exception as exc:
                    self.waiting.popleft()
                    self._answer_unstarted(request, f"sandbox could not start the invocation: {exc!r}")
                    continue
                return
            self.waiting.popleft()
            try:
                self._dispatch(request, min(warm, key=lambda c: c.forked).slot)
            except Exception as exc:
                self._answer_unstarted(request, f"sandbox could not start the invocation: {exc!r}")

    def _idle(self) -> list[Invocation]:
        """Warm children (pid known, no request) that are not on their way out."""
        return [
            c for c in (s.child for s in self.slots)
            if c is not None and c.pid and c.request is None and not c.retired and c.status is None
        ]  # fmt: skip

    def _make_room(self, profile: Profile) -> None:
        """Children for the waiting requests of ``profile``: forked into free slots (each
        request goes to the first warm, in order); with no slot free and none coming, a warm
        child of another profile is retired, and its slot is free once it has exited."""
        wanted = sum(1 for _, needs in self.waiting if needs == profile)
        coming = sum(1 for c in self.forking if c.profile == profile)
        free = [s for s in self.slots if s.child is None]
        while free and coming < wanted:
            self._warm(free.pop(0), profile)
            coming += 1
        if not coming:
            other = next((c for c in self._idle() if c.profile != profile), None)
            if other is not None:
                self._retire(other)

    def _warm(self, slot: Slot, profile: Profile) -> Invocation:
        """Have a child forked into ``slot`` that prepares itself and waits for a request
        (its pid comes with the fork server's next ``Forked``: :meth:`_from_forker`)."""
        workdir = tempfile.mkdtemp(dir=self.workdir_root)
        if slot.uid is not None:
            os.chown(workdir, slot.uid, slot.uid)
        if slot.cgroup is not None:
            slot.cgroup.prepare(self.config.limits)
        out, err, result, request = (os.pipe2(os.O_CLOEXEC) for _ in range(4))
        call_ours, call_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        setup = {
            "workdir": workdir, "cgroup_procs": slot.cgroup.join_path() if slot.cgroup else [],
            "pids_cgroup": self._pids_cgroup, "uid": slot.uid, "network": profile[0], "rlimits": profile[1],
        }  # fmt: skip
        assert self.forker is not None
        try:
            self.forker.fork(setup, [out[1], err[1], result[1], request[0], call_theirs.fileno()])
        except ForkServerGone:
            for fd in (*out, *err, *result, *request):
                os.close(fd)
            call_ours.close()
            call_theirs.close()
            shutil.rmtree(workdir, ignore_errors=True)
            self._forker_gone()
            raise
        cap = self.config.limits.output_cap_bytes
        child = Invocation(
            slot, 0, workdir, {}, request_fd=request[1], forked=time.monotonic(), profile=profile
        )
        os.close(request[0])
        call_theirs.close()
        call_ours.setblocking(False)
        child.call_sock = call_ours
        self.by_call[call_ours.fileno()] = child
        self.selector.register(call_ours, selectors.EVENT_READ, "call")
        for which, (r, w), size in ((OUT, out, cap), (ERR, err, cap), (RESULT, result, RESULT_CAP)):
            os.close(w)
            os.set_blocking(r, False)
            child.captures[r] = (which, Capture(size))
            self.by_fd[r] = child
            self.selector.register(r, selectors.EVENT_READ, "pipe")
        slot.child = child
        self.forking.append(child)
        return child

    def _unwarmed(self) -> Slot | None:
        if self.stopping:
            return None
        return next((s for s in self.slots if s.child is None and not s.warm_failed), None)

    def _dispatch(self, request: InvocationRequest, slot: Slot) -> None:
        child = slot.child
        assert child is not None and child.pid and child.request_fd is not None
        slot.warm_failed = False
        if slot.cgroup is not None and slot.cgroup.configured != request.limits:
            slot.cgroup.prepare(request.limits)
        for which, cap in child.captures.values():
            if which != RESULT:
                cap.cap = request.limits.output_cap_bytes
        child.request, child.started = request, time.monotonic()
        child.network = request.network or self.netns_fd is None
        try:
            with contextlib.suppress(BrokenPipeError):  # it died warm: its wait status says how
                os.write(child.request_fd, child_request(request))
        finally:
            os.close(child.request_fd)
            child.request_fd = None

    def _read_pipe(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._read_pipe_once(fd)

    def _read_pipe_once(self, fd: int) -> None:
        data = os.read(fd, 1 << 16)
        if data:
            self.by_fd[fd].captures[fd][1].feed(data)
        else:
            self._close_pipe(fd)

    def _read_ready(self, child: Invocation) -> None:
        for fd in [fd for fd, (_, cap) in child.captures.items() if cap.open]:
            with contextlib.suppress(BlockingIOError):
                while child.captures[fd][1].open:
                    self._read_pipe_once(fd)

    def _close_pipe(self, fd: int) -> None:
        child = self.by_fd.pop(fd)
        child.captures[fd][1].open = False
        self.selector.unregister(fd)
        os.close(fd)
        if child.status is None and child.request is not None:
            self._answer_early(child)

    def _answer_early(self, child: Invocation) -> None:
        """Answer a success as soon as the child closed its pipes, not after its exit, when it
        has no descendant left to kill (then its reap only frees the slot)."""
        if any(cap.open for _, cap in child.captures.values()):
            return
        result = child.result()
        usage = result.get("usage")
        if "output" not in result or not isinstance(usage, dict) or self._has_descendants(child):
            return
        child.status, child.ended = 0, time.monotonic()  # the wait status of ``_exit(0)``, next
        child.cpu_s, child.maxrss_kb = usage["cpu_s"], usage["maxrss_kb"]
        child.wchar = usage["wchar"] + child.capture(RESULT).total  # it measured before the result
        self._answer_result(child, result, left_behind=0)
        child.answered, child.status = True, None

    def _has_descendants(self, child: Invocation) -> bool:
        if child.slot.cgroup is not None:
            return bool(child.slot.cgroup.pids() - {child.pid})
        try:
            own = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
        except OSError:
            return True
        return bool(own) or bool(self._orphans())

    def _reap(self) -> None:
        """Take what the fork server reported (forks, exits); reap our own child (the server)."""
        assert self.forker is not None
        self._from_forker()
        exits, self.exits = self.exits, []
        for message in exits:
            child = self.children.get(message.pid)
            if child is None or child.status is not None:
                continue
            if child.request is not None:
                self._read_ready(child)  # EOFs not yet seen: the early answer must not depend on luck
            child.status, child.ended = message.status, time.monotonic()
            child.cpu_s, child.maxrss_kb, child.wchar = message.cpu_s, message.maxrss_kb, message.wchar
            child.leftovers = self._sweep(child, signal.SIGKILL)
        if self.forker.gone:
            self._forker_gone()
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.forker.pid:
                self._forker_gone()

    def _from_forker(self) -> None:
        """The fork server's news: the pids of forked children, at once; exits, queued
        for :meth:`_reap`."""
        assert self.forker is not None
        for message in self.forker.messages():
            if isinstance(message, Forked):
                child = self.forking.popleft()
                child.pid = message.pid
                self.children[message.pid] = child
                if message.pid in self.swept:  # signalled as an orphan before we knew it
                    self._retire(child)
            elif isinstance(message, ForkFailed):
                self._fork_failed(self.forking.popleft(), message.error)
            else:
                self.exits.append(message)
        if not self.forking:  # every child of the server is known: no orphan can be one of ours
            self.swept.clear()

    def _retire(self, child: Invocation) -> None:
        """Tell a warm child to exit unused: EOF on its request pipe."""
        child.retired = True
        if child.request_fd is not None:
            os.close(child.request_fd)
            child.request_fd = None

    def _unfork(self, child: Invocation) -> None:
        """Undo what :meth:`_warm` prepared for a child that was never forked."""
        for fd in [fd for fd, (_, cap) in child.captures.items() if cap.open]:
            self._close_pipe(fd)
        if child.request_fd is not None:
            os.close(child.request_fd)
        self._close_calls(child)
        shutil.rmtree(child.workdir, ignore_errors=True)
        child.slot.child = None

    def _fork_failed(self, child: Invocation, error: str) -> None:
        """A fork the server could not make (a process limit, memory): the first request
        waiting for a child of that profile is answered with the error (so a waiting
        request cannot make the template fork in a loop); with none, the slot is warmed
        on demand only."""
        self._unfork(child)
        for entry in self.waiting:
            if entry[1] == child.profile:
                self.waiting.remove(entry)
                self._answer_unstarted(entry[0], f"sandbox could not start the invocation: {error}")
                return
        child.slot.warm_failed = True

    def _forker_gone(self) -> None:
        """The fork server died, and every child with it: each running invocation ends
        as killed, nothing new starts, and the template stops."""
        assert self.forker is not None
        self.forker.gone, self.stopping = True, True
        while self.forking:  # asked for, never forked (or died with the server): warm, no request
            self._unfork(self.forking.popleft())
        now = time.monotonic()
        for child in self.children.values():
            if child.status is None:
                child.status, child.ended = int(signal.SIGKILL), now  # the wait status of a SIGKILL
                child.leftovers = self._sweep(child, signal.SIGKILL)

    def _signal(self, child: Invocation, sig: int) -> None:
        if child.status is None:
            with contextlib.suppress(OSError):
                os.killpg(child.pid, sig)
        self._sweep(child, sig)

    def _sweep(self, child: Invocation, sig: int) -> int:
        """Signal what is left of the child outside its process group; how many there were."""
        if child.slot.cgroup is not None:
            return child.slot.cgroup.signal_all(sig)
        # Without a control group: orphans (reparented to us) are killed on sight, whichever
        # invocation they came from; nothing may outlive the invocation that started it.
        pids = self._orphans()
        if self.forking:
            self.swept.update(pids)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        return len(pids)

    def _orphans(self) -> list[int]:
        """The fork server's live children that are no invocation of ours. A child forked
        an instant ago, before the server said so, would look like one: if it is signalled,
        it is retired when its pid comes (``swept``), never given a request."""
        assert self.forker is not None
        self._from_forker()
        out = []
        for parent in (self.forker.pid, self.forker.init_pid):  # the namespace's init: reparented
            if parent:
                with contextlib.suppress(OSError):
                    out += [pid for pid in live_children(parent) if pid not in self.children]
        return [pid for pid in out if pid != self.forker.init_pid]  # the init is the server's too

    def _tick(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.status is None:
                if child.request is None:
                    if self.stopping:
                        self._retire(child)
                elif child.kill_at is None and now >= child.deadline:
                    child.timed_out, child.kill_at = True, now + child.request.limits.grace_s
                    self._signal(child, signal.SIGTERM)
                elif child.kill_at is not None and now >= child.kill_at:
                    self._signal(child, signal.SIGKILL)
                continue
            pipes_open = any(cap.open for _, cap in child.captures.values())
            left = self._sweep(child, signal.SIGKILL)
            if (pipes_open or left) and now < child.ended + DRAIN_S:
                continue
            for fd in [fd for fd, (_, cap) in child.captures.items() if cap.open]:
                self._drain(fd)
            self._finish(child, left_behind=left)
        self._start_waiting()

    def _drain(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 1 << 16):
                self.by_fd[fd].captures[fd][1].feed(data)
        self._close_pipe(fd)

    # -- calls: ctx.call of a running child, relayed to the worker and back (agents.sandbox.relay)

    def _on_call_socket(self, fd: int, mask: int) -> None:
        child = self.by_call.get(fd)
        if child is None or child.call_sock is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush_calls(child)
        if not mask & selectors.EVENT_READ or child.call_sock is None:
            return
        try:
            data = child.call_sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            calls = child.call_frames.feed(data) if data else None
        except ValueError:  # a frame over the limit: the child loses its calls, nothing else
            calls = None
        if calls is None:
            self._close_calls(child)
            return
        for call in calls:  # the child's word: only objects go on, stamped with its invocation
            if isinstance(call, dict) and child.request is not None and child.status is None:
                with contextlib.suppress(OSError):
                    send_frame(self.sock, {"op": "call", "invocation": child.request.id, "call": call})

    def _answer_call(self, invocation: str, answer: dict[str, Any]) -> None:
        running = (c for c in self.children.values() if c.request is not None and c.request.id == invocation)
        child = next(running, None)
        if child is None or child.call_sock is None:
            return  # it ended: nobody waits for the answer
        child.call_out += encode(answer)
        if len(child.call_out) > MAX_CALL_BACKLOG:  # it asks and never reads: it loses its calls
            self._close_calls(child)
            return
        self._flush_calls(child)

    def _flush_calls(self, child: Invocation) -> None:
        """Send what the child's socket takes now; the rest when it is writable again (a
        child that does not read its answers holds up nothing but its own calls)."""
        assert child.call_sock is not None
        try:
            sent = child.call_sock.send(child.call_out) if child.call_out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close_calls(child)
            return
        del child.call_out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if child.call_out else 0)
        self.selector.modify(child.call_sock, events, "call")

    def _close_calls(self, child: Invocation) -> None:
        if child.call_sock is not None:
            self.by_call.pop(child.call_sock.fileno(), None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.call_sock)
            child.call_sock.close()
            child.call_sock = None
            child.call_out.clear()

    # -- answers

    def _finish(self, child: Invocation, left_behind: int) -> None:
        del self.children[child.pid]
        if child.request_fd is not None:
            os.close(child.request_fd)
        self._close_calls(child)
        shutil.rmtree(child.workdir, ignore_errors=True)
        if not left_behind:
            child.slot.child = None
        if child.request is None:  # died warm (or retired): its next request warms it on demand
            child.slot.warm_failed = not self.stopping and not child.retired
            return
        if not child.answered:
            self._answer_result(child, child.result(), left_behind)

    def _answer_result(self, child: Invocation, result: dict[str, Any], left_behind: int) -> None:
        assert child.request is not None
        category, error = verdict(child, result)
        if left_behind:
            error = f"{error or ''} ({left_behind} processes would not die: slot {child.slot.index} held)"
        output = result.get("output") if category is None else None
        tokens = result.get("tokens")
        self._answer(child.request.id, output, error, audit_of(child, category),
                     child.capture(OUT).value(), child.capture(ERR).value(), child.workdir,
                     tokens if isinstance(tokens, list) else [],
                     {k: result[k] for k in ("logs", "logs_dropped") if k in result})  # fmt: skip

    def _answer_unstarted(self, request: InvocationRequest, error: str) -> None:
        unknown = request.agent not in self.agents
        category = ErrorCategory.INPUT_ERROR if unknown else ErrorCategory.INTERNAL_ERROR
        self._answer(request.id, None, error, unstarted_audit(request, category), b"", b"", None)

    def _answer(self, id: str, output: Any, error: str | None, audit: InvocationAudit,
                stdout: bytes, stderr: bytes, workdir: str | None, tokens: list[Any] | None = None,
                lines: dict[str, Any] | None = None) -> None:  # fmt: skip
        """``lines``: the agent's log lines as the child sent them (agents.sandbox.loglines)."""
        with contextlib.suppress(OSError):
            send_frame(self.sock, {
                "id": id, "output": output, "error": error, "audit": audit.model_dump(mode="json"),
                "workdir": workdir, "tokens": tokens or [],
                "stdout": base64.b64encode(stdout).decode(), "stderr": base64.b64encode(stderr).decode(),
                **(lines or {}),
            })  # fmt: skip

    def _cleanup(self) -> None:
        if self.forker is not None:
            self.forker.close()
        remove_slots(self.hierarchies, self.tag)
        shutil.rmtree(self.workdir_root, ignore_errors=True)
        if self.netns_fd is not None:
            os.close(self.netns_fd)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    try:
        template = Template(SandboxConfig.model_validate_json(argv[2]), sock)
    except Exception as exc:
        send_frame(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    prepare_loop()
    take_worker_level()  # for the agents' log lines in every child (agents.sandbox.loglines)
    # Children get the environment their request gives; the template needs none of its own.
    os.environ.clear()
    # Everything imported so far is moved out of the collector's sight: a child's
    # collections then do not touch (and copy) the pages it shares with the template.
    gc.collect()
    gc.freeze()
    trim_heap()
    template.start_forker()
    template.serve()
    return 0


if __name__ == "__main__":
    for entry in SandboxConfig.model_validate_json(sys.argv[2]).sys_path[::-1]:
        sys.path.insert(0, entry)
    sys.exit(main(sys.argv))
