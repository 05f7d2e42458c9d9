"""A 3-node JetStream cluster on free loopback ports for the whole run, provisioned R3.

Tests talk to it through one client per node (``clients[i]`` is connected to
node ``i`` only), so a test that enqueues on one node and works on another
proves the path crosses the cluster's routes, not one server's memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.cluster import NatsCluster
from mesh.provision import ProvisionConfig, provision
from mesh.wire.connection import connect, jetstream

REPLICAS = 3


@dataclass(frozen=True)
class Node:
    """A client connected to one node of the cluster."""

    index: int
    nc: Client
    js: JetStreamContext


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path_factory.mktemp("cluster"), size=REPLICAS)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="session")
async def provisioned(cluster: NatsCluster) -> NatsCluster:
    """The platform's streams and buckets, each with 3 replicas."""
    nc = await connect(cluster.urls[0], name="pytest-provision")
    try:
        # R3 stream creates wait on a Raft election each: on a loaded machine more than 5 s.
        await provision(await jetstream(nc, timeout=20), ProvisionConfig(replicas=REPLICAS))
    finally:
        await nc.close()
    return cluster


@pytest.fixture
async def clients(provisioned: NatsCluster) -> AsyncIterator[list[Node]]:
    """``clients[i]``: a connection to node ``i`` (and only its URL)."""
    nodes: list[Node] = []
    try:
        for i, url in enumerate(provisioned.urls):
            nc = await connect(url, name=f"pytest-node-{i}")
            nodes.append(Node(i, nc, await jetstream(nc)))
        yield nodes
    finally:
        for node in nodes:
            if not node.nc.is_closed:
                await node.nc.close()
