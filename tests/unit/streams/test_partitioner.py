"""Key partitioning is Faust's default: Kafka's murmur2, as aiokafka computes it."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.partitioner import partition_for


def test_matches_the_java_kafka_client_on_known_vectors() -> None:
    # Reference values of org.apache.kafka's DefaultPartitioner over 1000 partitions.
    assert partition_for(b"", 1000) == 681
    assert partition_for(b"a", 1000) == 524
    assert partition_for(b"ab", 1000) == 434
    assert partition_for(b"abc", 1000) == 107
    assert partition_for(b"123456789", 1000) == 566
    assert partition_for(b"\x00 ", 1000) == 742


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_same_partition_as_faust_default_partitioner(key: bytes, n: int) -> None:
    parts = list(range(n))
    assert partition_for(key, n) == DefaultPartitioner()(key, parts, parts)


def test_keyless_records_spread_over_all_partitions() -> None:
    assert {partition_for(None, 4) for _ in range(400)} == {0, 1, 2, 3}
