"""Agents: what an agent is, and where a process finds them.

Write one::

    from pydantic import BaseModel
    from agents import Agent, PermanentError, RunContext

    class In(BaseModel):
        value: float

    class Out(BaseModel):
        value: float

    class Double(Agent[In, Out]):
        key = "double"
        Input, Output = In, Out

        async def run(self, input: In, ctx: RunContext) -> Out:
            if input.value < 0:
                raise PermanentError("negative values are not supported")  # no retry
            return Out(value=input.value * 2)

and run it with ``AF_AGENTS=my_module:Double agent-factory up`` (see
:mod:`agents.registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from agents.contract import Agent, RunContext
    from agents.errors import AgentCallError, AgentCallFailed, AgentCallRefused, AgentCallTimedOut
    from agents.registry import AgentLoadError, Registry, load_registry
    from mesh.errors import PermanentError

__all__ = [
    "Agent",
    "AgentCallError",
    "AgentCallFailed",
    "AgentCallRefused",
    "AgentCallTimedOut",
    "AgentLoadError",
    "PermanentError",
    "Registry",
    "RunContext",
    "load_registry",
]

# Loaded on first use: a sandbox template imports only what its agents need.
_WHERE = {
    "Agent": "agents.contract",
    "RunContext": "agents.contract",
    "AgentCallError": "agents.errors",
    "AgentCallFailed": "agents.errors",
    "AgentCallRefused": "agents.errors",
    "AgentCallTimedOut": "agents.errors",
    "AgentLoadError": "agents.registry",
    "Registry": "agents.registry",
    "load_registry": "agents.registry",
    "PermanentError": "mesh.errors",
}

__getattr__ = lazy_exports(__name__, _WHERE)
