"""Messaging between agents: durable and ephemeral channels, request/reply.

Modules: ``messaging`` (the Mesh API agents call), ``registry`` (channel
names, streams, who listens), ``subscriptions`` (the consumer loops),
``encoder`` (envelope bytes and headers), ``acks``, ``schemas`` (typed
payloads), ``errors``. Imports core and ``mesh.wire`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.channels.messaging import Mesh, MeshConfig, Subscription, rpc_channel
    from mesh.channels.registry import Channel, list_channels, tail

__all__ = ["Channel", "Mesh", "MeshConfig", "Subscription", "list_channels", "rpc_channel", "tail"]

# Loaded on first use: importing one module of the package does not load them all.
_WHERE = {
    "Mesh": "mesh.channels.messaging",
    "MeshConfig": "mesh.channels.messaging",
    "Subscription": "mesh.channels.messaging",
    "rpc_channel": "mesh.channels.messaging",
    "Channel": "mesh.channels.registry",
    "list_channels": "mesh.channels.registry",
    "tail": "mesh.channels.registry",
}

__getattr__ = lazy_exports(__name__, _WHERE)
