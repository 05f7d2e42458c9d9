"""The set of agents a process can run, by key, and where they come from.

Your own agents join the built-in examples without touching the platform:

* ``AF_AGENTS=my_pkg.agents:Double,other.mod:Report`` (or ``up --agent
  my_pkg.agents:Double``, repeatable): each ``module:Class`` is imported and
  instantiated;
* or an installed package declares them in the ``agent_factory.agents``
  entry-point group (``[project.entry-points."agent_factory.agents"]``
  ``double = "my_pkg.agents:Double"`` in its ``pyproject.toml``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from agents.contract import Agent
from agents.errors import AgentError, AgentNotFound
from agents.examples import FuelCombustion, NoOp, PurchasedElectricity, UnitNormaliser
from agents.packaging.environment import env_dir
from agents.packaging.errors import PackSpecError
from agents.packaging.spec import load_spec
from mesh.names import AGENT_KEY_RE

__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentLoadError",
    "Registry",
    "example_registry",
    "load_package",
    "load_registry",
]

ENTRY_POINT_GROUP = "agent_factory.agents"


class AgentLoadError(AgentError):
    """An agent named in ``AF_AGENTS``/``--agent`` or an entry point cannot be loaded."""

    status = 400


class Registry:
    def __init__(self, agents: Iterable[Agent[Any, Any]] = ()) -> None:
        self._agents: dict[str, Agent[Any, Any]] = {}
        for agent in agents:
            self.add(agent)

    def add(self, agent: Agent[Any, Any], *, replace: bool = False) -> None:
        if not AGENT_KEY_RE.match(agent.key):
            raise AgentLoadError(f"invalid agent key {agent.key!r}: use lowercase letters, digits, '-'")
        if agent.key in self._agents and not replace:
            raise AgentLoadError(f"agent {agent.key!r} registered twice")
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
    return Registry([FuelCombustion(), PurchasedElectricity(), UnitNormaliser(), NoOp()])


def load_agent(spec: str) -> Agent[Any, Any]:
    """Import ``module:Class`` and instantiate it; :class:`AgentLoadError` says what is wrong."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise AgentLoadError(f"agent {spec!r}: expected 'module:Class', e.g. 'my_pkg.agents:Double'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own error while importing
        raise AgentLoadError(f"agent {spec!r}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise AgentLoadError(f"agent {spec!r}: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise AgentLoadError(f"agent {spec!r}: {attr} is not a subclass of agents.Agent")
    for name in ("key", "Input", "Output"):
        if not hasattr(cls, name):
            raise AgentLoadError(f"agent {spec!r}: {attr} does not set {name}")
    try:
        return cls()
    except TypeError as exc:  # abstract run(), or an __init__ that needs arguments
        raise AgentLoadError(f"agent {spec!r}: cannot create {attr}(): {exc}") from exc


def load_registry(specs: Sequence[str] | str = (), *, examples: bool = True) -> Registry:
    """The examples, every agent of the ``agent_factory.agents`` entry-point
    group, and ``specs`` (``module:Class``; a string is split on commas)."""
    if isinstance(specs, str):
        specs = [part for part in specs.split(",") if part.strip()]
    registry = example_registry() if examples else Registry()
    for point in entry_points(group=ENTRY_POINT_GROUP):
        registry.add(load_agent(point.value))
    for spec in specs:
        registry.add(load_agent(spec))
    return registry


def load_package(directory: Path) -> Registry:
    """The agent of the installed package in ``directory``, alone, imported from there
    (first on the path: its modules win over any of the same name elsewhere), with
    its requirements' environment, if it has one, last on the path."""
    try:
        spec = load_spec(directory)
    except PackSpecError as exc:
        raise AgentLoadError(f"{directory}: not an installed package: {exc}") from exc
    sys.path.insert(0, str(directory))
    environment = env_dir(directory)
    if spec.requirements and environment.is_dir():  # after site-packages: the platform's own win
        sys.path.append(str(environment))
    agent = load_agent(spec.entry_point)
    if (agent.key, agent.version) != (spec.name, spec.version):
        raise AgentLoadError(
            f"{directory}: {spec.entry_point} is {agent.key} {agent.version}, but its agent.pack.yaml says "
            f"{spec.name} {spec.version}"
        )
    return Registry([agent])
