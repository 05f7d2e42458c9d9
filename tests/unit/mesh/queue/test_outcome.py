"""The finished event is serialized from a dict on the hot path; it must be exactly
what the models would produce, and read back as the run's final state."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider

from mesh import trace
from mesh.deadletters import AttemptError
from mesh.envelope import Envelope, decode, utcnow
from mesh.queue.outcome import finished_msg_id, outcome_message, success_message
from mesh.queue.producer import TaskSpec, build_task, queued_record
from mesh.queue.runs import ExecutionFinished, ModelUsage, RunStatus, parse_run
from mesh.queue.spans import stamped
from mesh.wire.protocol import EXPECTED_LAST_SUBJECT_SEQ, expect_last_subject_seq, parse_headers


def _finished_task(replay: int = 0) -> tuple[Envelope, object]:
    spec = TaskSpec("fuel-combustion", {"fuel": "diesel", "quantity": 100}, tenant="acme",
                    routing_key="site-7", idempotency_key="k-1")  # fmt: skip
    task = build_task(spec, "0123456789abcdef0123456789abcdef")
    if replay:
        task = task.model_copy(update={"payload": {**task.payload, "replay": replay}})
    state = parse_run(queued_record(task.id, spec, task.created_at, task.metadata))
    state.replay = replay
    state.status, state.attempts, state.result = RunStatus.FAILED, 2, {"co2e_kg": 1.5}
    state.errors = [AttemptError(attempt=1, error="boom", error_type="RuntimeError")]
    state.error = "RuntimeError: boom"
    state.started_at = state.first_started_at = utcnow()  # as the worker's _running sets them
    state.finished_at = state.started_at + timedelta(milliseconds=12)
    return task, state


def test_the_event_bytes_validate_as_an_envelope_carrying_execution_finished() -> None:
    task, state = _finished_task()
    subject, data, raw_headers = outcome_message(task, state)  # type: ignore[arg-type]
    headers = parse_headers(raw_headers)
    assert headers["Content-Type"] == "application/json"
    assert subject == f"af.events.execution.finished.fuel-combustion.{task.id}"
    assert headers["Nats-Msg-Id"] == finished_msg_id(task.id, 0) and headers["AF-Tenant"] == "acme"
    envelope = decode(data)
    event = ExecutionFinished.model_validate(envelope.payload)
    assert envelope.type == "execution.finished" and envelope.causation_id == task.id
    assert envelope.metadata == task.metadata
    assert event.status == RunStatus.FAILED and event.attempts == 2 and event.replay == 0
    assert event.errors[0].error == "boom" and event.input == {"fuel": "diesel", "quantity": 100}
    assert event.duration_ms is not None and 11.9 < event.duration_ms < 12.1
    # What the models would hold, field for field (unset optional fields are left out of the bytes).
    assert event == ExecutionFinished(
        run_id=state.run_id,
        agent=state.agent,
        tenant=state.tenant,
        status=state.status,  # type: ignore[attr-defined]
        attempts=2,
        result={"co2e_kg": 1.5},
        error="RuntimeError: boom",
        errors=state.errors,  # type: ignore[attr-defined]
        input=task.payload["input"],
        routing_key="site-7",
        priority=2,
        idempotency_key="k-1",
        replay=0,
        enqueued_at=task.created_at,
        started_at=state.started_at,
        finished_at=state.finished_at,  # type: ignore[attr-defined]
        duration_ms=event.duration_ms,
    )
    assert envelope.target is None and envelope.reply_to is None and envelope.source == "fuel-combustion"
    assert b'"reply_to"' not in data and b'"routing_key":"site-7"' in data


def test_a_projected_event_reads_back_as_the_final_run_state() -> None:
    task, state = _finished_task(replay=2)
    _, data, headers = outcome_message(task, state)  # type: ignore[arg-type]
    assert parse_headers(headers)["Nats-Msg-Id"] == finished_msg_id(task.id, 2)
    run = parse_run(data)
    assert run.model_dump(exclude={"expires_at", "progress", "input"}) == state.model_dump(  # type: ignore[attr-defined]
        exclude={"expires_at", "progress", "input"}
    )
    assert run.input == task.payload["input"]  # a final record shows the input its event carries
    assert parse_run(state.model_dump_json().encode()) == state  # type: ignore[attr-defined]


@pytest.mark.parametrize("replay", [0, 3])
@pytest.mark.parametrize("routing_key", [None, "site-7"])
def test_a_first_attempt_success_is_the_same_event_as_its_run_state_would_give(
    replay: int, routing_key: str | None
) -> None:
    spec = TaskSpec("fuel-combustion", {"fuel": "diesel"}, tenant="acme", routing_key=routing_key,
                    idempotency_key="k-1" if routing_key else None)  # fmt: skip
    task = build_task(spec, "0123456789abcdef0123456789abcdef")
    if replay:
        task = task.model_copy(update={"payload": {**task.payload, "replay": replay}})
    started = utcnow()
    finished = started + timedelta(milliseconds=3)
    state = parse_run(queued_record(task.id, spec, task.created_at, task.metadata))
    state.status, state.attempts, state.started_at = RunStatus.SUCCEEDED, 1, started
    state.result, state.finished_at = {"co2e_kg": 2.5}, finished
    fast = success_message(task, "fuel-combustion", 1, started, finished, {"co2e_kg": 2.5})
    assert fast == outcome_message(task, state)
    assert parse_run(fast[1]).status == RunStatus.SUCCEEDED
    # With the agent's version and the model tokens it reported: still the same bytes.
    tokens = [{"model": "gpt-x", "input_tokens": 120, "output_tokens": 30}]
    state.version, state.usage = "1.4.0", [ModelUsage.model_validate(t) for t in tokens]
    fast = success_message(task, "fuel-combustion", 1, started, finished, {"co2e_kg": 2.5},
                           version="1.4.0", usage=tokens)  # fmt: skip
    assert fast == outcome_message(task, state)
    event = ExecutionFinished.model_validate(decode(fast[1]).payload)
    assert event.version == "1.4.0" and event.usage == state.usage


def test_the_queued_record_is_a_run_state_with_its_defaults_left_out() -> None:
    spec = TaskSpec("noop", {}, tenant="acme", routing_key="site-7", idempotency_key="k", ttl_s=60)
    task = build_task(spec, "f" * 32)
    record = json.loads(queued_record(task.id, spec, task.created_at, task.metadata))
    assert "result" not in record and "errors" not in record and record["status"] == "queued"
    state = parse_run(queued_record(task.id, spec, task.created_at, task.metadata))
    assert (state.run_id, state.agent, state.tenant, state.routing_key, state.idempotency_key) == (
        "f" * 32, "noop", "acme", "site-7", "k",
    )  # fmt: skip
    assert state.status == RunStatus.QUEUED and state.attempts == 0 and state.errors == []
    assert state.expires_at == task.created_at + timedelta(seconds=60)


def test_a_nan_result_is_recorded_as_null_so_the_event_stays_json() -> None:
    spec = TaskSpec("noop", {"q": float("inf")})
    task = build_task(spec, "f" * 32)
    started = utcnow()
    _, data, _ = success_message(task, "noop", 1, started, started, {"co2e_kg": float("nan")})

    def refuse(name: str) -> object:
        raise ValueError(name)

    event = json.loads(data, parse_constant=refuse)["payload"]
    assert event["result"] == {"co2e_kg": None} and event["input"] == {"q": None}


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_event_carries_the_runs_traceparent_through_its_compare_and_set() -> None:
    task, state = _finished_task()
    _, _, raw = outcome_message(task, state, traceparent=TRACEPARENT)  # type: ignore[arg-type]
    headers = parse_headers(expect_last_subject_seq(raw, 7))
    assert headers["traceparent"] == TRACEPARENT and headers["Nats-Msg-Id"] == finished_msg_id(task.id, 0)
    assert headers[EXPECTED_LAST_SUBJECT_SEQ] == "7"
    _, _, plain = outcome_message(task, state)  # type: ignore[arg-type]
    assert b"traceparent" not in plain


def test_a_traced_event_names_the_span_that_writes_it_as_its_parent() -> None:
    task, state = _finished_task()
    outcome = outcome_message(task, state)  # type: ignore[arg-type]
    assert stamped(outcome) is outcome  # no span, no trace context: unchanged
    provider = TracerProvider()
    trace.use(provider)
    try:
        with trace.tracer().start_as_current_span("outcome.write") as span:
            _, _, raw = stamped(outcome)
    finally:
        trace.use(None)
    ids = span.get_span_context()
    assert (
        parse_headers(raw)["traceparent"]
        == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"
    )
