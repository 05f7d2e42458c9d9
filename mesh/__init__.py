"""Everything NATS, in layers (imports point down only; ``make lint`` checks it):

* ``mesh`` (core): ``provision``, ``names``, ``envelope``, ``errors``, ``lazy``,
  ``limits``, ``deadletters``, ``trace``, ``embedded``, ``kv``, ``stopping``,
  ``settings``;
* ``mesh.wire``: connections and the NATS protocol hot path;
* ``mesh.queue``, ``mesh.channels``, ``mesh.schedules``: the services.

Typical use::

    from mesh import connect, jetstream
    from mesh.provision import provision
    from mesh.queue import TaskQueue, TaskSpec

    nc = await connect("nats://127.0.0.1:4222")
    js = await jetstream(nc)
    await provision(js)
    async with TaskQueue(nc, js) as queue:
        queued = await queue.enqueue(TaskSpec("fuel-combustion", {"fuel": "diesel", ...}))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.provision import ProvisionConfig
    from mesh.wire.connection import connect, jetstream

__all__ = ["ProvisionConfig", "connect", "jetstream"]

# Loaded on first use: ``import mesh.names`` does not load nats-py and aiohttp (a
# sandbox template imports little, so each fork copies and unmaps less). Not
# ``provision``: once the submodule ``mesh.provision`` is imported, that name is the module.
_WHERE = {
    "ProvisionConfig": "mesh.provision",
    "connect": "mesh.wire.connection",
    "jetstream": "mesh.wire.connection",
}

__getattr__ = lazy_exports(__name__, _WHERE)
