"""mesh.cluster.NatsCluster's fault controls do what the fault tests rely on."""

from __future__ import annotations

from pathlib import Path

from mesh.cluster import NatsCluster
from mesh.wire.connection import connect, jetstream, through_outage
from tests.helpers import eventually


async def test_a_killed_stream_leader_is_replaced_and_comes_back_as_a_follower_with_its_store(
    tmp_path: Path,
) -> None:
    with NatsCluster(tmp_path, size=3) as cluster:
        assert cluster.meta_leader() is not None
        nc = await connect(cluster.urls[0], name="pytest-controls")
        try:
            js = await jetstream(nc)
            await js.add_stream(name="CTRL", subjects=["ctrl.>"], num_replicas=3)
            # A new R3 stream can exist before it has a leader; a publish then gets no responders.
            # And once it has one, the node this client is on may learn of it a moment later.
            (first,) = await eventually(lambda: _leader(cluster, "CTRL"), timeout=10, what="a stream leader")
            await through_outage(lambda: js.publish("ctrl.a", b"1"))
            ports = (cluster.nodes[first].port, cluster.nodes[first].monitor_port)
            cluster.kill(first)
            assert cluster.nodes[first].pid is None
            # JetStream notices a lost leader after its heartbeats time out (about 4 s here).
            (second,) = await eventually(
                lambda: _leader(cluster, "CTRL", other_than=first), timeout=20, what="a new stream leader"
            )
            cluster.restart(first)
            assert (cluster.nodes[first].port, cluster.nodes[first].monitor_port) == ports
            assert cluster.leader_of("CTRL") == second  # a restarted node rejoins as a follower
            info = await js.stream_info("CTRL")
            assert info.state.messages == 1
        finally:
            await nc.close()


async def test_a_paused_node_answers_nothing_and_resumes_where_it_was(tmp_path: Path) -> None:
    with NatsCluster(tmp_path, size=3) as cluster:
        cluster.pause(2)
        assert 2 not in cluster._reachable()
        cluster.resume(2)
        nc = await connect(cluster.urls[2], name="pytest-resumed")
        await nc.close()


def _leader(cluster: NatsCluster, stream: str, other_than: int | None = None) -> tuple[int] | None:
    """The leader's index in a 1-tuple (node 0 is a leader too, and ``eventually`` wants a true value)."""
    leader = cluster.leader_of(stream)
    return (leader,) if leader is not None and leader != other_than else None
