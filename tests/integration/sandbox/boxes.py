"""The tests' view of a real sandbox: the agents it serves, tight limits, and
the check that nothing of an invocation is left behind."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agents.sandbox import InvocationResult, Sandbox, SandboxLimits
from tests.helpers import eventually

HERE = Path(__file__).parent
AGENTS = [
    "agents.examples.noop:NoOp",
    *(f"hostile_agents:{name}" for name in (
        "ForkBomb", "MemoryHog", "Spinner", "DiskFiller", "TermIgnorer", "OrphanMaker", "Connector",
        "Printer",
    )),
]  # fmt: skip
MiB = 1024 * 1024
#: Small limits, so that each attack meets them quickly.
TIGHT = SandboxLimits(
    timeout_s=10, grace_s=1, cpu_s=10, memory_bytes=64 * MiB, address_space_bytes=512 * MiB,
    open_files=64, file_size_bytes=8 * MiB, processes=16, output_cap_bytes=64 * 1024,
)  # fmt: skip


@dataclass
class Box:
    sandbox: Sandbox
    workdirs: Path  # where the template makes each invocation's working directory
    kind: str

    @property
    def cgroup_dirs(self) -> list[Path]:
        tag = str(self.sandbox.template_pid)
        template = self.sandbox._running()
        return [path / f"af-sandbox-{tag}" for path in template.cgroups]

    async def invoke(self, agent: str, input: str = "{}", **kw: object) -> InvocationResult:
        kw.setdefault("limits", TIGHT)
        return await self.sandbox.invoke(agent, input, **kw)  # type: ignore[arg-type]

    async def noop_while(self, attack: asyncio.Task[InvocationResult]) -> float:
        """Normal invocations keep succeeding while ``attack`` runs; the slowest one's seconds."""
        slowest = 0.0
        while True:
            start = time.monotonic()
            result = await self.invoke("noop", '{"echo": "still here"}')
            assert result.ok and result.output == {"echo": "still here"}, result
            slowest = max(slowest, time.monotonic() - start)
            if attack.done():
                return slowest

    async def assert_nothing_left(self, result: InvocationResult, within: float = 5.0) -> None:
        """Within ``within`` s: no process runs as a slot's uid (what agent code runs as, and
        everything it starts) but the warm children waiting for a request, or, without a uid
        drop, the fork server has no more children than slots (its warm ones); the
        invocation's working directory is gone."""
        await eventually(
            lambda: self.leftovers(result) == [], within, f"{result.audit.invocation_id} cleaned"
        )

    def leftovers(self, result: InvocationResult) -> list[object]:
        template = self.sandbox._running()
        if template.uids:  # warm children are confined already: they run as slot uids, unused
            left: list[object] = [p for p in processes() if p.uid in template.uids and p.name != "af-warm"]
        else:
            children = [p for p in processes() if p.ppid == self.sandbox.forker_pid]
            left = children if len(children) > self.sandbox.config.slots else []
        if result.workdir and Path(result.workdir).exists():
            left.append(result.workdir)
        return left


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str
    name: str


def processes() -> list[Proc]:
    """Every process but the zombies."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            lines = Path(entry.path, "status").read_text().splitlines()
        except OSError:
            continue
        status = dict(line.split(":", 1) for line in lines if ":" in line)
        uid, state = int(status["Uid"].split()[0]), status["State"].split()[0]
        proc = Proc(int(entry.name), int(status["PPid"]), uid, state, status["Name"].strip())
        if proc.state != "Z":
            out.append(proc)
    return out


def running(forker_pid: int) -> list[Proc]:
    """The invocations running now (warm children are named ``af-warm`` until a request comes)."""
    return [p for p in processes() if p.ppid == forker_pid and p.name == "af-invocation"]


def exists(path: str | Path) -> bool:
    return Path(path).exists()
