"""Reading a whole KV bucket (or the keys under a prefix) without a consumer (following
keys is :class:`mesh.wire.follow.KeyFollower`).

nats-py's ``KeyValue.keys()`` and ``watchall()`` create an ephemeral ordered
consumer that outlives ``watcher.stop()`` by its inactive threshold (5
minutes): a listing served once per request left one consumer behind per
call. Here the keys come from the bucket stream's subject counts (one
``STREAM.INFO``) and each value from a direct get, so a listing leaves
nothing on the server, and it cannot end early as a watch's end-of-snapshot
marker can.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from mesh import names

__all__ = ["current_entries"]

log = logging.getLogger(__name__)


async def current_entries(
    js: JetStreamContext, kv: KeyValue, bucket: str, pattern: str = ">"
) -> list[KeyValue.Entry]:
    """The current entries of ``bucket`` whose keys match ``pattern``, by key;
    deleted and purged keys are left out."""
    prefix = names.kv_subject(bucket, "")
    info = await js.stream_info(names.kv_stream(bucket), subjects_filter=prefix + pattern)
    found: list[KeyValue.Entry] = []
    for subject in sorted(info.state.subjects or {}):
        try:
            entry = await kv.get(subject[len(prefix) :])
        except NotFoundError:  # deleted (a marker remains), or expired meanwhile
            continue
        if entry.value:
            found.append(entry)
    return found
