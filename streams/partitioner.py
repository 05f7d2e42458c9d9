"""Key-based partitioning identical to Faust's default (aiokafka's murmur2 partitioner).

A record produced through this driver lands in the same partition number as it
would with Faust on Kafka, so co-partitioned topics and tables line up and a
key's table entry is found on the worker that owns its source partition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka.partitioner import DefaultPartitioner

__all__ = ["Partitioner", "default_partitioner", "partition_for"]

#: ``(key, all_partitions, available_partitions) -> partition``, Faust's
#: ``producer_partitioner`` signature.
Partitioner = Callable[[bytes | None, Sequence[int], Sequence[int]], int]

default_partitioner: Partitioner = DefaultPartitioner()


def partition_for(key: bytes | None, partitions: int, partitioner: Partitioner | None = None) -> int:
    """Partition of ``key`` among ``partitions`` (random for a ``None`` key)."""
    all_partitions = list(range(partitions))
    return int((partitioner or default_partitioner)(key, all_partitions, all_partitions))
