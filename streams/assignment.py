"""Faust's ``PartitionAssignor`` driven without Kafka: encode, assign, decode.

The assignor speaks Kafka's consumer-protocol structs. Members publish the
encoded metadata in their heartbeat, the leader runs ``assign`` over a
minimal cluster view built from the topic catalogue, and each member decodes
its own assignment (actives and standby changelog partitions alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from faust.types import TP

from streams.topics import TopicRegistry, TopicSpec

__all__ = ["apply_assignment", "assign", "member_metadata"]


class _Cluster:
    """The slice of aiokafka's ``ClusterMetadata`` that Faust's assignor reads."""

    def __init__(self, specs: Mapping[str, TopicSpec]) -> None:
        self._specs = specs

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        spec = self._specs.get(topic)
        return set(range(spec.partitions)) if spec else None

    available_partitions_for_topic = partitions_for_topic

    def topics(self) -> set[str]:
        return set(self._specs)


def member_metadata(assignor: Any, subscription: tuple[str, ...]) -> bytes:
    """What a member advertises: its subscription and the assignor's state."""
    return cast(bytes, assignor.metadata(set(subscription)).encode())


async def assign(assignor: Any, topics: TopicRegistry, metadata: Mapping[str, bytes]) -> dict[str, bytes]:
    """Run the assignor over every member (leader only). Raises ``TopicNotFound``
    while a subscribed topic is not declared yet (the leader retries)."""
    decoded = {m: ConsumerProtocolMemberMetadata.decode(raw) for m, raw in metadata.items()}
    names = {t for meta in decoded.values() for t in meta.subscription}
    specs = {t: await topics.require(t) for t in names}
    result = assignor.assign(_Cluster(specs), decoded)
    return {m: cast(bytes, a.encode()) for m, a in result.items()}


def apply_assignment(assignor: Any, raw: bytes) -> set[TP]:
    """Hand a member its encoded assignment; returns its partitions."""
    assignment = ConsumerProtocolMemberAssignment.decode(raw)
    assignor.on_assignment(assignment)
    return {TP(topic, p) for topic, partitions in assignment.assignment for p in partitions}
