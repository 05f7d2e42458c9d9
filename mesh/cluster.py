"""A JetStream cluster of local ``nats-server`` processes, for ``up --cluster N`` and the tests.

N :class:`~mesh.embedded.NatsServer` nodes on free loopback ports, each with
its own store dir, routed to each other. ``start()`` returns once every node
accepts clients *and* JetStream has a meta leader that sees every peer, so
streams with N replicas can be created at once. The fault controls (``kill``,
``restart``, ``pause``, ``resume``) act on one node's process, and
``leader_of`` says which node leads a stream — what the fault tests of
issue 21 need.

Verified with the wheel's nats-server 2.15.1 on 2 shared cores (see
``mesh.embedded._cluster_config`` for the config): three nodes are ready,
meta leader included, about 0.2 to 0.7 s after launch; every node's ``/jsz``
names the meta leader, and a stream's ``/jsz`` detail (``?accounts=true&
streams=true``) names its leader on each node that holds a replica. A client
connected to one node learns the others from the server's INFO
(``connect_urls``); nats-py would present a URL's credentials only to that
URL's server, so :func:`mesh.wire.connection.connect` passes them as
options, which reach every node (``tests/cluster/test_reconnect.py``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mesh.embedded import ClusterMember, NatsServer, find_free_port
from mesh.errors import ConnectionFailed

__all__ = ["GLOBAL_ACCOUNT", "NatsCluster"]

GLOBAL_ACCOUNT = "$G"  # the account of a server with no accounts block (users in `authorization`)
_PROBE_TIMEOUT_S = 0.5  # one HTTP look at a node's /jsz; a paused node never answers


class NatsCluster:
    """``size`` nats-server nodes named ``n0``, ``n1``, … under ``base_dir/n<i>``.

    ``credentials``, ``sync_interval`` and ``die_with_parent`` apply to every
    node as in :class:`NatsServer`. Ports are picked once, so a node that is
    restarted comes back where it was, with the store it had.
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        name: str = "agent-factory",
        host: str = "127.0.0.1",
        sync_interval: str = "default",
        credentials: tuple[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        base_dir = Path(base_dir).absolute()
        route_ports = [find_free_port(host) for _ in range(size)]
        routes = tuple(f"nats-route://{host}:{port}" for port in route_ports)
        self.name = name
        self.nodes = [
            NatsServer(
                base_dir / f"n{i}", host=host, sync_interval=sync_interval, monitor_port=find_free_port(host),
                die_with_parent=die_with_parent, credentials=credentials,
                cluster=ClusterMember(f"n{i}", name, route_ports[i], routes),
            )
            for i in range(size)
        ]  # fmt: skip
        self._paused: set[int] = set()

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (with the credentials), for nats-py's ``servers=[...]``."""
        return [node.url for node in self.nodes]

    def server_name(self, i: int) -> str:
        member = self.nodes[i].cluster
        assert member is not None
        return member.server_name

    def index_of(self, server_name: str) -> int:
        """The node index of a server name as JetStream reports it (``cluster.leader``)."""
        for i in range(len(self.nodes)):
            if self.server_name(i) == server_name:
                return i
        raise KeyError(f"no node named {server_name!r} in cluster {self.name!r}")

    def start(self, timeout: float = 20.0) -> None:
        """Launch every node and wait until the cluster is ready; stop what
        started if it does not get there."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start every node's process and return at once (from the thread that
        should own them: ``die_with_parent`` follows it)."""
        try:
            for node in self.nodes:
                node.launch()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Return once every node accepts clients and JetStream has a meta
        leader that sees all of them; stop the nodes if that fails."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.wait_ready(max(0.1, deadline - time.monotonic()))
            self._wait_for_meta_leader(range(len(self.nodes)), deadline)
        except BaseException:
            self.stop()
            raise

    def reclaim(self, timeout: float = 10.0) -> list[int]:
        """Stop the nodes an earlier owner left running on these stores; their pids."""
        return [pid for node in self.nodes if (pid := node.reclaim(timeout)) is not None]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (a paused one is resumed first, or it could not exit);
        a node that already died is simply reaped."""
        for i in list(self._paused):
            with contextlib.suppress(ConnectionFailed):
                self.resume(i)
        for node in self.nodes:
            if node.pid is not None:
                with contextlib.suppress(ProcessLookupError, ConnectionFailed):  # died on its own
                    node.send_signal(signal.SIGTERM)  # all at once, then wait for each
        for node in self.nodes:
            node.stop(timeout)

    def kill(self, i: int) -> None:
        """Crash node ``i`` (SIGKILL): no goodbye to its peers or its clients."""
        self._paused.discard(i)
        self.nodes[i].kill()

    def restart(self, i: int, timeout: float = 20.0) -> None:
        """Start node ``i`` again (stopping it first if it runs), on the same
        ports and store; return once it accepts clients and knows the meta leader."""
        if i in self._paused:
            self.resume(i)
        node = self.nodes[i]
        node.stop()
        node.start(timeout)
        self._wait_for_meta_leader([i], time.monotonic() + timeout)

    def pause(self, i: int) -> None:
        """Freeze node ``i`` (SIGSTOP): its sockets stay open but nothing answers,
        as a partitioned node looks to its peers once their pings time out."""
        self.nodes[i].send_signal(signal.SIGSTOP)
        self._paused.add(i)

    def resume(self, i: int) -> None:
        self.nodes[i].send_signal(signal.SIGCONT)
        self._paused.discard(i)

    def meta_leader(self) -> int | None:
        """The node that says it is JetStream's meta leader, or None (none can be reached, or an election)."""
        for i in self._reachable():
            jsz = self._jsz(i)
            if jsz is not None and (jsz.get("meta_cluster") or {}).get("leader") == self.server_name(i):
                return i
        return None

    def leader_of(self, stream: str, account: str = GLOBAL_ACCOUNT) -> int | None:
        """The node leading ``stream`` (a KV bucket's is ``KV_<bucket>``), or None
        during an election or when no quorum of nodes can be reached.

        A node that was just restarted may still name itself from its stored
        state; the leader is the node that names itself *and* is named by a
        majority of the cluster.
        """
        views: dict[int, str | None] = {}
        for i in self._reachable():
            jsz = self._jsz(i, f"?accounts=true&streams=true&acc={urllib.parse.quote(account)}")
            views[i] = None
            for detail in (jsz or {}).get("account_details") or []:
                for found in detail.get("stream_detail") or []:
                    if found.get("name") == stream:
                        views[i] = (found.get("cluster") or {}).get("leader")
        quorum = len(self.nodes) // 2 + 1
        for i, named in views.items():
            if named == self.server_name(i) and list(views.values()).count(named) >= quorum:
                return i
        return None

    def caught_up(self, account: str = GLOBAL_ACCOUNT) -> bool:
        """Every running node answers, and the meta leader and the leader of
        each stream and consumer of ``account`` run and see every running peer
        of their group as current: stopping any one node now leaves every group
        a caught-up majority (what a rolling restart waits for before it takes
        the next node down)."""
        meta = self.meta_leader()
        if meta is None or not self._sees_every_peer(meta):
            return False
        running = {self.server_name(i) for i in self._reachable()}
        query = f"?accounts=true&streams=true&consumers=true&acc={urllib.parse.quote(account)}"
        groups: set[str] = set()  # every raft group a node holds
        led: set[str] = set()  # those whose leader (running) sees its peers current
        for i in self._reachable():
            jsz = self._jsz(i, query)
            if jsz is None:
                return False
            for detail in jsz.get("account_details") or []:
                for stream in detail.get("stream_detail") or []:
                    for group in [stream, *(stream.get("consumer_detail") or [])]:
                        cluster = group.get("cluster") or {}
                        name = str(cluster.get("raft_group") or group.get("name"))
                        groups.add(name)
                        # Only a leader knows whether its followers are current.
                        if cluster.get("leader") == self.server_name(i) and all(
                            peer.get("current")
                            for peer in cluster.get("replicas") or []
                            if peer.get("name") in running
                        ):
                            led.add(name)
        return groups <= led

    def _reachable(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.pid is not None and i not in self._paused]

    def _jsz(self, i: int, query: str = "") -> dict[str, Any] | None:
        return self._monitor(i, f"jsz{query}")

    def _monitor(self, i: int, endpoint: str) -> dict[str, Any] | None:
        """One monitoring endpoint of node ``i`` as JSON; None if it does not answer in time."""
        url = f"http://{self.nodes[i].host}:{self.nodes[i].monitor_port}/{endpoint}"
        try:
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:
                body: dict[str, Any] = json.load(response)
        except (OSError, ValueError):
            return None
        return body

    def _wait_for_meta_leader(self, nodes: range | list[int], deadline: float) -> None:
        """Until each of ``nodes`` has routes to every other running node and
        names the same meta leader, and that leader sees every other running
        node as current. (Routes first: under load, a JetStream API request
        sent while routes were still being set up was lost once, and its
        stream create timed out.)"""
        last: object = None
        while time.monotonic() < deadline:
            if not all(self._routed(i) for i in nodes):
                time.sleep(0.02)
                continue
            views = [self._jsz(i) for i in nodes]
            leaders = {(view or {}).get("meta_cluster", {}).get("leader") for view in views}
            last = leaders
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                leader = self.index_of(str(next(iter(leaders))))
                if self._sees_every_peer(leader):
                    return
            time.sleep(0.02)
        msg = f"JetStream cluster {self.name!r}: no meta leader seen by every node in time (last: {last})"
        raise ConnectionFailed(msg)

    def _routed(self, i: int) -> bool:
        routes = (self._monitor(i, "routez") or {}).get("routes") or []
        peers = {route.get("remote_name") for route in routes}
        return {self.server_name(j) for j in self._reachable() if j != i} <= peers

    def _sees_every_peer(self, leader: int) -> bool:
        meta = (self._jsz(leader) or {}).get("meta_cluster") or {}
        current = {peer.get("name") for peer in meta.get("replicas") or [] if peer.get("current")}
        expected = {self.server_name(i) for i in self._reachable() if i != leader}
        return expected <= current

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
