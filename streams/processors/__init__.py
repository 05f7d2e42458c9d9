"""The stream processors: Faust apps on ``af-executions`` whose decisions go to KV.

* ``metering`` — prices executions, aggregates cost, budgets and quotas, billing records;
* ``breaker`` — the fleet-wide circuit breaker (``af_breakers``);
* ``canary`` — per-version metrics for rollouts (``af_canary_metrics``).

``streams`` builds on ``mesh`` only: workers and the gateway never import a
processor, they read the KV buckets the processors write (docs/processors.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

#: Every processor: module ``streams.processors.<name>`` has its ``install(app, source, config)``.
PROCESSORS: tuple[str, ...] = ("metering", "breaker", "canary")

if TYPE_CHECKING:
    from streams.processors.app import ProcessorConfig, build, prepare, run_processor
    from streams.processors.executions import EXECUTIONS_TOPIC, Finished, read_finished

__all__ = [
    "EXECUTIONS_TOPIC",
    "PROCESSORS",
    "Finished",
    "ProcessorConfig",
    "build",
    "prepare",
    "read_finished",
    "run_processor",
]

_WHERE = {
    "EXECUTIONS_TOPIC": "streams.processors.executions",
    "Finished": "streams.processors.executions",
    "read_finished": "streams.processors.executions",
    "ProcessorConfig": "streams.processors.app",
    "build": "streams.processors.app",
    "prepare": "streams.processors.app",
    "run_processor": "streams.processors.app",
}
__getattr__ = lazy_exports(__name__, _WHERE)
