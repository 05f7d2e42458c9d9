"""Channel names: the prefix says the guarantee, the name maps to readable subjects."""

from __future__ import annotations

import pytest

from mesh.channels.errors import InvalidChannelName
from mesh.channels.registry import Channel, channel_of_subject
from mesh.envelope import ChannelType


def test_durable_channel_maps_to_stream_subject_and_consumer_group() -> None:
    channel = Channel.parse("durable:carbon.calculate")
    assert channel.kind is ChannelType.DURABLE
    assert channel.subject == "af.ch.carbon.calculate"
    assert channel.consumer == "ch_carbon_calculate"
    assert str(channel) == "durable:carbon.calculate"
    assert channel_of_subject(channel.subject) == channel


def test_ephemeral_channel_maps_to_a_core_subject_and_allows_wildcards() -> None:
    assert Channel.parse("ephemeral:agent.health").subject == "af.eph.agent.health"
    pattern = Channel.parse("ephemeral:agent.*.health.>")
    assert pattern.is_pattern
    assert pattern.registry_prefix == "ephemeral.agent._any.health._rest"


@pytest.mark.parametrize(
    "text",
    [
        "carbon.calculate",  # no guarantee named
        "queue:carbon",
        "durable:carbon.*",  # durable channels are concrete
        "durable:Carbon",
        "ephemeral:a..b",
        "ephemeral:a.>.b",
        "ephemeral:a_b",  # '_' is reserved for consumer names
        "durable:" + "a" * 201,
    ],
)
def test_malformed_names_are_refused_with_the_rule(text: str) -> None:
    with pytest.raises(InvalidChannelName, match="channel"):
        Channel.parse(text)


def test_distinct_names_never_share_a_consumer_group() -> None:
    names = ["a.b-c", "a-b.c", "a.b.c", "ab.c"]
    assert len({Channel.parse(f"durable:{n}").consumer for n in names}) == len(names)
