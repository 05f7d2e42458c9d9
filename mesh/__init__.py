"""Everything NATS: the task queue, the messaging mesh, envelopes, provisioning.

Typical use::

    from mesh import TaskQueue, TaskSpec, connect, jetstream, provision

    nc = await connect("nats://127.0.0.1:4222")
    js = await jetstream(nc)
    await provision(js)
    async with TaskQueue(nc, js) as queue:
        queued = await queue.enqueue(TaskSpec("fuel-combustion", {"fuel": "diesel", ...}))
"""

from mesh.acks import AckTracker
from mesh.channel_errors import (
    InvalidChannelName,
    InvalidPayload,
    NoResponders,
    RejectMessage,
    RemoteError,
    TooManySubscribers,
)
from mesh.channels import BROADCAST, Channel, ChannelInfo, SubscriberInfo, list_channels, tail
from mesh.connection import connect, jetstream
from mesh.dlq import DeadLetter, dead_letter, list_dead_letters, purge, replay, replay_all
from mesh.envelope import ChannelType, Envelope, MessageType, Metadata, Priority, decode, encode
from mesh.errors import (
    BatchRejected,
    ConnectionFailed,
    DecodeError,
    MeshError,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    UnknownSchemaVersion,
)
from mesh.events import EXECUTION_FINISHED, ExecutionFinished
from mesh.maintenance import QueueMaintenance
from mesh.messaging import Mesh, MeshConfig, Subscription, rpc_channel
from mesh.provision import ProvisionConfig, provision
from mesh.queue import Enqueued, TaskQueue, TaskSpec
from mesh.runs import RunState, RunStatus, get_run
from mesh.scheduler import Scheduler
from mesh.schemas import SchemaRegistry
from mesh.settings import Settings
from mesh.stats import queue_stats
from mesh.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker

__all__ = [
    "BROADCAST",
    "EXECUTION_FINISHED",
    "AckTracker",
    "AgentQueueConfig",
    "BatchRejected",
    "Channel",
    "ChannelInfo",
    "ChannelType",
    "ConnectionFailed",
    "DeadLetter",
    "DecodeError",
    "Enqueued",
    "Envelope",
    "ExecutionFinished",
    "InvalidChannelName",
    "InvalidPayload",
    "Mesh",
    "MeshConfig",
    "MeshError",
    "MessageType",
    "Metadata",
    "NoResponders",
    "PayloadTooLarge",
    "PermanentError",
    "Priority",
    "ProvisionConfig",
    "QueueFull",
    "QueueMaintenance",
    "RejectMessage",
    "RemoteError",
    "RequestTimeout",
    "RunState",
    "RunStatus",
    "Scheduler",
    "SchemaRegistry",
    "Settings",
    "SubscriberInfo",
    "Subscription",
    "TaskContext",
    "TaskQueue",
    "TaskSpec",
    "TaskWorker",
    "TooManySubscribers",
    "UnknownSchemaVersion",
    "connect",
    "dead_letter",
    "decode",
    "encode",
    "get_run",
    "jetstream",
    "list_channels",
    "list_dead_letters",
    "provision",
    "purge",
    "queue_stats",
    "replay",
    "replay_all",
    "rpc_channel",
    "tail",
]
