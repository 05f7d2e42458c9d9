"""Cron schedules and event triggers that enqueue tasks.

Modules: ``definitions`` (what a schedule is, stored in KV and as server
message schedules) and ``scheduler`` (the service that relays firings and
triggers onto the queue). Imports core, ``mesh.wire`` and ``mesh.queue``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.schedules.definitions import CronSchedule, EventTrigger
    from mesh.schedules.scheduler import Scheduler

__all__ = ["CronSchedule", "EventTrigger", "Scheduler"]

# Loaded on first use: importing one module of the package does not load them all.
_WHERE = {
    "CronSchedule": "mesh.schedules.definitions",
    "EventTrigger": "mesh.schedules.definitions",
    "Scheduler": "mesh.schedules.scheduler",
}

__getattr__ = lazy_exports(__name__, _WHERE)
