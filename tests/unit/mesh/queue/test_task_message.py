"""A JSON task is serialized from its parts, not through the model; it must decode to
exactly the envelope the model builds, and refuse exactly what the model refuses."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.envelope import MSGPACK, Envelope, Priority, decode, encode
from mesh.errors import InvalidTask, PayloadTooLarge
from mesh.queue.producer import TaskSpec, build_task, task_message
from mesh.queue.runs import RunStatus, parse_run
from mesh.wire.protocol import encode_headers, parse_headers

RUN_ID = "0123456789abcdef0123456789abcdef"
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_token = st.text("abcXYZ019_-", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    payload=_json,
    tenant=_token,
    routing_key=st.none() | st.text(max_size=40),
    priority=st.sampled_from(list(Priority)),
    ttl=st.integers(-5, 100_000),
    idempotency_key=st.none() | st.text(max_size=20),
    correlation_id=st.none() | _token,
    source=st.none() | st.text(max_size=30),
)
def test_a_json_task_decodes_to_the_envelope_the_model_builds(
    payload: Any,
    tenant: str,
    routing_key: str | None,
    priority: Priority,
    ttl: int,
    idempotency_key: str | None,
    correlation_id: str | None,
    source: str | None,
) -> None:
    spec = TaskSpec("fuel-combustion", payload, tenant=tenant, routing_key=routing_key, priority=priority,
                    idempotency_key=idempotency_key, ttl_s=ttl, correlation_id=correlation_id,
                    source=source)  # fmt: skip
    message = task_message(spec, RUN_ID)
    task = decode(message.data)
    # What a worker decodes is what it would decode from the model's bytes (NaN: null in both).
    assert task == decode(encode(build_task(spec, RUN_ID, task.created_at)))
    headers = parse_headers(message.headers)
    assert headers["AF-Tenant"] == tenant and headers["Content-Type"] == "application/json"
    # No server TTL: it would remove a task under its running worker (the worker and
    # the reaper enforce the wait deadline instead).
    assert "Nats-TTL" not in headers and "Nats-Msg-Id" not in headers
    if routing_key is not None:
        # exactly what the generic header encoder gives (CR/LF become spaces)
        assert headers["AF-Routing-Key"] == parse_headers(encode_headers({"k": routing_key}))["k"]
    record = parse_run(message.record)
    assert (record.run_id, record.tenant, record.routing_key, record.priority) == (
        RUN_ID, tenant, routing_key, int(priority),
    )  # fmt: skip
    assert record.status == RunStatus.QUEUED and record.idempotency_key == idempotency_key
    assert record.enqueued_at == task.created_at
    assert record.expires_at == task.created_at + timedelta(seconds=task.metadata.ttl_s or 0)


@pytest.mark.parametrize(
    "change",
    [
        {"agent": "Bad Agent"},
        {"tenant": "no spaces"},
        {"tenant": ""},
        {"routing_key": "k" * 257},
        {"correlation_id": "c" * 129},
        {"source": "s" * 257},
        {"priority": 9},
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", MSGPACK])
def test_what_the_model_refuses_is_refused_as_an_invalid_task(
    change: dict[str, Any], content_type: str
) -> None:
    spec = TaskSpec(**{"agent": "noop", "input": {}, **change})
    with pytest.raises(InvalidTask):
        build_task(spec, RUN_ID)
    with pytest.raises(InvalidTask):
        task_message(spec, RUN_ID, content_type)


def test_a_bad_run_id_and_unserializable_input_are_refused() -> None:
    with pytest.raises(InvalidTask, match="run id"):
        task_message(TaskSpec("noop", {}), "not a token")
    with pytest.raises(InvalidTask, match="not serializable"):
        task_message(TaskSpec("noop", {"handle": object()}), RUN_ID)


def test_the_payload_limit_counts_the_serialized_task() -> None:
    spec = TaskSpec("noop", {"blob": "x" * 1000})
    size = len(task_message(spec, RUN_ID).data)
    assert task_message(spec, RUN_ID, limit=size).data
    with pytest.raises(PayloadTooLarge):
        task_message(spec, RUN_ID, limit=size - 1)


def test_dedup_and_batch_headers_travel_with_the_task() -> None:
    message = task_message(
        TaskSpec("noop", {}, routing_key="site\r\n7"), RUN_ID, dedup=True,
        extra_headers={"Nats-Batch-Id": "b1", "Nats-Batch-Sequence": "3"},
    )  # fmt: skip
    headers = parse_headers(message.headers)
    assert headers["Nats-Msg-Id"] == f"run-{RUN_ID}"
    assert headers["Nats-Batch-Id"] == "b1" and headers["Nats-Batch-Sequence"] == "3"
    assert headers["AF-Routing-Key"] == "site  7"  # no header injection
    assert message.headers.startswith(b"NATS/1.0\r\n") and message.headers.endswith(b"\r\n\r\n")
    assert message.headers.count(b"\r\n\r\n") == 1


def test_a_msgpack_task_goes_through_the_model() -> None:
    message = task_message(TaskSpec("noop", {"a": 1}), RUN_ID, MSGPACK)
    task = decode(message.data, MSGPACK)
    assert isinstance(task, Envelope) and task.payload["input"] == {"a": 1}
    assert json.loads(message.record)["run_id"] == RUN_ID


def _strict(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in the bytes")

    return json.loads(data, parse_constant=refuse)


def test_nan_and_infinity_are_written_as_null_as_the_model_writes_them() -> None:
    spec = TaskSpec("noop", {"x": float("nan"), "y": [float("inf"), -float("inf")], "z": 1.5})
    message = task_message(spec, RUN_ID)
    assert _strict(message.data)["payload"]["input"] == {"x": None, "y": [None, None], "z": 1.5}
    assert decode(message.data) == decode(encode(build_task(spec, RUN_ID, decode(message.data).created_at)))
