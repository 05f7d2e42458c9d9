"""A client whose node is SIGKILLed carries on through another node of the
cluster, with the credentials of the URL it was given (nats-py presents a
URL's own user info only to that URL's server; ``connect`` passes it as
options, which reach every node it discovers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from mesh.cluster import NatsCluster
from mesh.wire.connection import connect
from tests.helpers import eventually


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A cluster of its own (this test kills a node) that wants a password."""
    nodes = NatsCluster(Path(tmp_path_factory.mktemp("guarded")), size=3, credentials=("platform", "s3cret"))
    nodes.start()
    yield nodes
    nodes.stop()


async def _answers(nc: Client) -> bool:
    try:
        await nc.request("$JS.API.INFO", b"", timeout=1)
    except Exception:
        return False
    return True


async def test_a_client_whose_node_is_killed_reconnects_to_another_node_with_its_credentials(
    guarded: NatsCluster,
) -> None:
    nc = await connect(guarded.urls[0], name="pytest-reconnect")
    try:
        await eventually(lambda: len(nc.discovered_servers) >= 2, 10, "the other nodes learnt from INFO")
        guarded.kill(0)
        await eventually(lambda: _answers(nc), 20, "JetStream answering through another node")
        killed_port = int(guarded.urls[0].rsplit(":", 1)[1])
        assert nc.connected_url is not None and nc.connected_url.port != killed_port
    finally:
        await nc.close()
        guarded.restart(0)
