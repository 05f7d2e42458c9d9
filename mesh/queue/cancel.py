"""Cancel a run that has not finished: ``DELETE /api/v1/runs/{id}``, ``agent-factory cancel``.

A cancel is an outcome like any other (:mod:`mesh.queue.outcome`): the run's
``execution.finished`` event with status ``cancelled``, written by
compare-and-set on the run's event subject, so exactly one of a cancel and
the worker's own outcome is recorded:

* cancel first: the worker's outcome finds it and is not recorded (its
  result is dropped), a retry is not scheduled, nothing is dead-lettered;
* the worker first: the cancel finds a real outcome and is refused
  (:class:`~mesh.errors.RunAlreadyFinished`, 409) with the run's status.

Then the task is removed: the worker holding it is told on
``af.control.cancel.<agent>`` (core NATS) and stops the handler at its next
``await``; a task still waiting in its lane (or between attempts) is deleted
from ``AF_TASKS``, so it never starts and is never redelivered.

Not guaranteed: a handler already running is interrupted only where it
awaits, and a handler that a worker started in the moment before the cancel
may run to its end (its result is not recorded). Side effects a handler
caused before it was stopped are not undone.
"""

from __future__ import annotations

import contextlib
import logging

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mesh import names
from mesh.envelope import Envelope, MessageType, Metadata, utcnow
from mesh.errors import RunAlreadyFinished
from mesh.queue import metrics
from mesh.queue.outcome import cancelled_msg_id, write_outcome
from mesh.queue.runs import RunState, RunStatus, get_run, get_run_entry, stored_task

__all__ = ["cancel_run"]

log = logging.getLogger(__name__)


async def cancel_run(nc: Client, js: JetStreamContext, run_id: str, *, reason: str = "") -> RunState | None:
    """Cancel run ``run_id``; its cancelled state, or None if no live record of
    it exists (unknown, or finished more than 24 h ago: look in PostgreSQL).

    Raises :class:`~mesh.errors.RunAlreadyFinished` when it has an outcome.
    Idempotent: cancelling a cancelled run raises that, with ``cancelled``.
    """
    state, _ = await get_run_entry(js, run_id)
    if state is None:
        return None
    if state.status.finished:
        raise RunAlreadyFinished(run_id, state.status.value)
    task = await stored_task(js, state)
    if task is not None and isinstance(task.payload, dict):
        state.input = task.payload.get("input")  # as the final record will show it
    state.status, state.finished_at, state.progress, state.result = RunStatus.CANCELLED, utcnow(), None, None
    state.error = f"cancelled: {reason}" if reason else "cancelled"
    msg_id = cancelled_msg_id(run_id, state.replay)
    if not await write_outcome(js, task or _stand_in(state), state, msg_id, real=True):
        now = await get_run(js, run_id)
        raise RunAlreadyFinished(run_id, now.status.value if now is not None else "finished")
    # Recorded: from here no outcome of the worker's counts. Stop the work itself.
    metrics.count_finished(state.agent, state.version, state.tenant, state.priority, metrics.CANCELLED)
    await nc.publish(names.cancel_subject(state.agent), run_id.encode())
    if task is not None and state.seq is not None:
        with contextlib.suppress(NotFoundError):  # acked meanwhile by the worker that held it
            await js.delete_msg(names.STREAM_TASKS, state.seq)
    await nc.flush()
    return state


def _stand_in(state: RunState) -> Envelope:
    """The task's envelope, rebuilt from the run record once the task is gone."""
    return Envelope(
        id=state.run_id, type="task.run", message_type=MessageType.COMMAND, created_at=state.enqueued_at,
        payload={"agent": state.agent, "input": None, "replay": state.replay},
        metadata=Metadata(tenant=state.tenant, routing_key=state.routing_key, priority=state.priority),
    )  # fmt: skip
