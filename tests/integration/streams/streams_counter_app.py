"""The Faust app under test: count events per key into a table and two windowed tables.

Run as a worker process (for the SIGKILL tests)::

    python streams_counter_app.py <app id> <nats url> [<standby replicas>]

Events are raw key/value bytes on ``<app id>-events`` (4 partitions); each
event's timestamp decides its window.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from typing import Any

import faust

PARTITIONS = 4
WINDOW_S = 10.0
SESSION_TIMEOUT = 4.0


def build_app(
    app_id: str, nats_url: str, *, session_timeout: float = SESSION_TIMEOUT, **conf: Any
) -> faust.App:
    """``nats_url``: one server, or a cluster's nodes separated by ``;`` (Faust's
    own separator; the transport reads its settings off the first)."""
    first, *others = nats_url.split(";")
    app = faust.App(
        app_id,
        broker=";".join([f"{first}?session_timeout={session_timeout}&heartbeat=0.5", *others]),
        store="memory://",
        web_enabled=False,
        topic_partitions=PARTITIONS,
        broker_commit_interval=0.5,
        key_serializer="json",
        **{"table_standby_replicas": 0, **conf},
    )
    events = app.topic(
        f"{app_id}-events",
        partitions=PARTITIONS,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    counts = app.Table("counts", default=int, partitions=PARTITIONS, key_type=str)
    tumbling = app.Table("tumbling", default=int, partitions=PARTITIONS, key_type=str).tumbling(
        WINDOW_S, expires=timedelta(days=1)
    )
    hopping = app.Table("hopping", default=int, partitions=PARTITIONS, key_type=str).hopping(
        2 * WINDOW_S, WINDOW_S, expires=timedelta(days=1)
    )

    @app.agent(events)
    async def count(stream: Any) -> None:
        async for key, _value in stream.items():
            k = key.decode()
            counts[k] += 1
            tumbling[k] += 1
            hopping[k] += 1

    app.count_agent = count  # type: ignore[attr-defined]
    return app


def main() -> None:
    app_id, url = sys.argv[1], sys.argv[2]
    standbys = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    app = build_app(app_id, url, table_standby_replicas=standbys)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    group_log = logging.getLogger("streams")  # generations and takeovers, for the test logs
    group_log.setLevel(logging.INFO)
    group_log.addHandler(logging.StreamHandler())
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
