"""How a sandbox is set up (:class:`SandboxConfig`) and what one invocation
asks of its template (:class:`InvocationRequest`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.sandbox.limits import SandboxLimits

__all__ = ["ENV_PREFIXES", "InvocationRequest", "SandboxConfig"]

#: Environment variables whose names start so reach every invocation; others only by name.
ENV_PREFIXES = ("AF_", "OTEL_")


class SandboxConfig(BaseModel):
    """One template's agents and the defaults of every invocation it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agents: list[str]  # ``module:Class``, imported once by the template
    sys_path: list[str] = []  # prepended to the template's sys.path (where the agents' modules live)
    # Imported by the template too: after the uid drop a child can import only what others may read.
    preload: list[str] = ["encodings.idna"]
    limits: SandboxLimits = SandboxLimits()
    env_names: list[str] = []  # besides AF_* and OTEL_*, the variables passed through
    slots: int = Field(8, ge=1, le=1000)  # invocations running at once; more wait their turn
    use_cgroups: bool = True  # where the host has them
    use_network_namespace: bool = True  # where the host allows it
    use_pid_namespace: bool = True  # where the host allows it: one for the template's invocations
    drop_privileges: bool = True  # when the worker runs as root
    # Slot i of the template with pid P runs as uid and gid uid_base + P * 1000 + i.
    uid_base: int = Field(100_000, ge=1000, le=10**8)
    workdir_root: str | None = None  # default: the system temp dir


class InvocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    agent: str
    input: str  # JSON text, validated in the child against the agent's Input model
    context: dict[str, Any]  # RunContext fields: run_id, tenant, attempt, routing_key, config (JSON)
    limits: SandboxLimits
    network: bool
    env: dict[str, str]
