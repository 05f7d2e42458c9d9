"""The processors' input: every finished execution, as a Faust topic partitioned by agent.

``AF_EXECUTIONS`` (``mesh.provision``) is filled by the server from ``AF_EVENTS``,
one subject per partition. Topic ``af-executions`` has a partition stream per
partition of it, again filled by the server (a stream source filtered on the
partition's subject), so no process copies events and events keep flowing into
the topic while every processor is down. One agent's executions are in one
partition, in the order they finished; a processor owning a partition holds
all of that agent's state, and its offsets (stream sequences) are stable, which
is what lets a processor apply each event exactly once (see the processors).

Records have no key; the value is the finished event's envelope as the worker
published it (JSON), and its record header ``traceparent`` the run's trace
context, when the worker wrote one: :func:`traced` makes a processor's
handling of the event a span of the run's trace.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.api import StreamSource
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, ValidationError

from mesh import names, trace
from mesh.provision import execution_partitions
from mesh.queue.runs import ExecutionFinished
from mesh.queue.spans import AGENT, RUN_ID, TENANT
from streams.topics import TopicRegistry, TopicSpec

__all__ = ["EXECUTIONS_TOPIC", "PROCESSOR", "Finished", "declare_executions", "read_finished", "traced"]

log = logging.getLogger(__name__)

EXECUTIONS_TOPIC = "af-executions"
RETENTION_S = 86_400.0  # what the processors have not read in a day is dropped (as AF_EXECUTIONS does)
PROCESSOR: Final = "af.processor"  # span attribute: which processor handled the event
_NOTHING: Final = nullcontext()


class Finished(BaseModel):
    """A finished event's envelope, only the parts processors read."""

    model_config = ConfigDict(extra="ignore")

    id: str  # the event's id (its Nats-Msg-Id): one per run and replay generation
    payload: ExecutionFinished


def read_finished(value: bytes | None) -> Finished | None:
    """The finished event in a record of ``af-executions``; None (and a warning) for
    anything else, which a processor skips rather than crash on."""
    if not value:
        return None
    try:
        return Finished.model_validate_json(value)
    except ValidationError as exc:
        log.warning("not a finished event, skipped: %s", str(exc).splitlines()[0])
        return None


def traced(event: Any, finished: Finished, processor: str) -> AbstractContextManager[object]:
    """The CONSUMER span of ``processor`` handling one finished event (a Faust event),
    child of the span that wrote it, with the run's agent, tenant and run id.

    A shared do-nothing context manager, with nothing allocated, when this
    process records no spans, or the event carries no trace context (written
    by the reaper, a cancel, an older worker) or one not sampled: a processor
    starts no trace of its own per event."""
    if not trace.recording():
        return _NOTHING
    raw = event.headers.get(trace.TRACEPARENT)
    if raw is None:
        return _NOTHING
    parent = raw.decode() if isinstance(raw, bytes) else str(raw)
    if not trace.sampled(parent):
        return _NOTHING
    run = finished.payload
    attributes = {AGENT: run.agent, TENANT: run.tenant, RUN_ID: run.run_id, PROCESSOR: processor}
    context = trace.extract({trace.TRACEPARENT: parent})
    return trace.tracer().start_as_current_span(
        f"{processor} {run.agent}", context, SpanKind.CONSUMER, attributes
    )


def partition_source(partition: int) -> StreamSource:
    subject = names.execution_partition_subject(partition)
    return StreamSource(name=names.STREAM_EXECUTIONS, filter_subject=subject)


async def declare_executions(js: JetStreamContext, replicas: int = 1) -> TopicSpec:
    """Declare ``af-executions`` with ``AF_EXECUTIONS``'s partitions (idempotent).

    Raises ``ValueError`` when the topic exists with another partition count
    than ``AF_EXECUTIONS`` (one of them was re-created): the processors'
    partitions would no longer hold whole agents."""
    partitions = await execution_partitions(js)
    spec = await TopicRegistry(js, replicas).declare(
        EXECUTIONS_TOPIC, partitions, replicas=replicas, retention_s=RETENTION_S, source=partition_source
    )
    if spec.partitions != partitions or not spec.sourced:
        own = "" if spec.sourced else " of its own"
        raise ValueError(
            f"topic {EXECUTIONS_TOPIC} has {spec.partitions} partitions{own}, "
            f"{names.STREAM_EXECUTIONS} has {partitions}: delete the topic's streams and its "
            f"faust-topics entry to re-declare it"
        )
    return spec
