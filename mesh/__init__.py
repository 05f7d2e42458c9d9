"""Everything NATS, in layers (imports point down only; ``make lint`` checks it):

* ``mesh`` (core): ``provision``, ``names``, ``envelope``, ``errors``,
  ``limits``, ``deadletters``, ``trace``, ``embedded``, ``kv``, ``stopping``,
  ``settings``;
* ``mesh.wire``: connections and the NATS protocol hot path;
* ``mesh.queue``, ``mesh.channels``, ``mesh.schedules``: the services.

Typical use::

    from mesh import connect, jetstream, provision
    from mesh.queue import TaskQueue, TaskSpec

    nc = await connect("nats://127.0.0.1:4222")
    js = await jetstream(nc)
    await provision(js)
    async with TaskQueue(nc, js) as queue:
        queued = await queue.enqueue(TaskSpec("fuel-combustion", {"fuel": "diesel", ...}))
"""

from mesh.provision import ProvisionConfig, provision
from mesh.wire.connection import connect, jetstream

__all__ = ["ProvisionConfig", "connect", "jetstream", "provision"]
