"""The set of agents a process can run, by key."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from agents.contract import Agent
from agents.errors import AgentNotFound
from mesh.names import AGENT_KEY_RE

__all__ = ["Registry", "example_registry"]


class Registry:
    def __init__(self, agents: Iterable[Agent[Any, Any]] = ()) -> None:
        self._agents: dict[str, Agent[Any, Any]] = {}
        for agent in agents:
            self.add(agent)

    def add(self, agent: Agent[Any, Any]) -> None:
        if not AGENT_KEY_RE.match(agent.key):
            raise ValueError(f"invalid agent key {agent.key!r}: use lowercase letters, digits, '-'")
        if agent.key in self._agents:
            raise ValueError(f"agent {agent.key!r} registered twice")
        self._agents[agent.key] = agent

    def get(self, key: str) -> Agent[Any, Any]:
        try:
            return self._agents[key]
        except KeyError:
            raise AgentNotFound(key) from None

    def __contains__(self, key: object) -> bool:
        return key in self._agents

    def __iter__(self) -> Iterator[Agent[Any, Any]]:
        return iter(self._agents.values())

    def keys(self) -> list[str]:
        return sorted(self._agents)


def example_registry() -> Registry:
    from agents.examples import FuelCombustion, NoOp, PurchasedElectricity, UnitNormaliser

    return Registry([FuelCombustion(), PurchasedElectricity(), UnitNormaliser(), NoOp()])
