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

from agents.contract import Agent, RunContext
from agents.registry import AgentLoadError, Registry, load_registry
from mesh.queue.worker import PermanentError

__all__ = ["Agent", "AgentLoadError", "PermanentError", "Registry", "RunContext", "load_registry"]
