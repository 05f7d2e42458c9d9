"""The resources the API handlers use, held by the application."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.lifecycle.actions import Operator
from agents.registry import Registry
from gateway.operations import OperationRunner
from gateway.settings import Settings
from mesh.queue.breakers import BreakerState
from mesh.queue.producer import TaskQueue
from mesh.wire.follow import KeyFollower

__all__ = ["SERVICES", "Services"]


@dataclass
class Services:
    nc: Client
    js: JetStreamContext
    pool: asyncpg.Pool
    registry: Registry
    settings: Settings
    queue: TaskQueue
    lifecycle: Operator
    operations: OperationRunner
    served_agents: Callable[[], set[str]] = field(default=lambda: set())
    breakers: KeyFollower[BreakerState] | None = None  # every agent's circuit breaker, followed live


SERVICES = web.AppKey("services", Services)
