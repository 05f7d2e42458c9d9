"""The durable priority task queue: enqueue, work, record outcomes, dead letters.

Modules: ``producer`` (TaskQueue: enqueue, batches, idempotency), ``worker``
(TaskWorker: pull, run, record, ack), ``dispatch`` (which lane next),
``outcome`` (the one recorded outcome per run), ``runs`` (run records and
the finished event), ``cancel``, ``dlq``, ``maintenance`` (expiry,
the dead-letter mover), ``stats`` and ``metrics``, ``limits``, ``contract``
(the JSON Schema files). Imports core and ``mesh.wire`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.queue.cancel import cancel_run
    from mesh.queue.producer import Enqueued, TaskQueue, TaskSpec
    from mesh.queue.runs import ExecutionFinished, RunState, RunStatus, get_run
    from mesh.queue.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker

__all__ = [
    "AgentQueueConfig",
    "Enqueued",
    "ExecutionFinished",
    "PermanentError",
    "RunState",
    "RunStatus",
    "TaskContext",
    "TaskQueue",
    "TaskSpec",
    "TaskWorker",
    "cancel_run",
    "get_run",
]

# Loaded on first use: importing one module of the package does not load them all.
_WHERE = {
    "Enqueued": "mesh.queue.producer",
    "TaskQueue": "mesh.queue.producer",
    "TaskSpec": "mesh.queue.producer",
    "AgentQueueConfig": "mesh.queue.worker",
    "PermanentError": "mesh.queue.worker",
    "TaskContext": "mesh.queue.worker",
    "TaskWorker": "mesh.queue.worker",
    "RunState": "mesh.queue.runs",
    "RunStatus": "mesh.queue.runs",
    "get_run": "mesh.queue.runs",
    "ExecutionFinished": "mesh.queue.runs",
    "cancel_run": "mesh.queue.cancel",
}

__getattr__ = lazy_exports(__name__, _WHERE)
