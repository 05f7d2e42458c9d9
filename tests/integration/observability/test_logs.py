"""The fleet's logs from NATS: a worker's log line about a run is found by
``agent-factory logs --run R`` (issue 25, part 2)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.registry import example_registry
from gateway.api.middleware import log_access_to_stderr
from gateway.app import Gateway, Parts
from gateway.cli import cli
from gateway.settings import Settings
from gateway.telemetry.logs import ACCESS_LOGGER, LogStream, log_stream
from mesh import names, trace
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from tests.helpers import eventually, terminate
from tests.integration.gateway.conftest import served


@contextmanager
def chatty_worker(nats_url: str, data_dir: Path, *, sandbox: bool = False) -> Iterator[Path]:
    """A worker process serving :class:`Chatty` (in the process, or in its sandbox), tracing
    to its stdout; yields its output file."""
    log = data_dir / "chatty.log"
    env = {**os.environ, "AF_NATS_URL": nats_url, "AF_DATA_DIR": str(data_dir), "AF_LOG_FORMAT": "json",
           "AF_TRACE_EXPORTER": "console", "AF_TRACE_SAMPLE_RATIO": "1",
           "AF_AGENTS": "tests.integration.observability.chatty:Chatty"}  # fmt: skip
    argv = [sys.executable, "-m", "gateway.cli", "worker", "--name", "chatty-worker", "--agents", "chatty",
            "--drain-timeout", "2", *([] if sandbox else ["--no-sandbox"])]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        terminate(proc)


def _logs(nats_url: str, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["logs", *args, "-o", "json"], env={"AF_NATS_URL": nats_url})
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


async def test_a_workers_log_line_about_a_run_is_found_by_agent_factory_logs_run(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, nats_url: str, tmp_path: Path
) -> None:
    with chatty_worker(nats_url, tmp_path) as stderr:
        enqueued = await queue.enqueue(
            TaskSpec("chatty", {"value": 21}, tenant="acme", correlation_id="corr-25")
        )
        run_id = enqueued.run_id

        async def succeeded() -> bool:
            state = await get_run(mesh_js, run_id)
            return state is not None and state.status is RunStatus.SUCCEEDED

        await eventually(succeeded, 30, "the chatty run succeeded", every=0.1)

        async def found() -> list[dict[str, Any]]:
            return await asyncio.to_thread(_logs, nats_url, "--run", run_id)

        lines = await eventually(found, 10, f"a log line of run {run_id}", every=0.2)
    [line] = lines
    assert line["msg"] == "doubling 21.0" and line["logger"] == "tests.chatty" and line["level"] == "INFO"
    assert line | {"run_id": run_id, "agent": "chatty", "tenant": "acme", "correlation_id": "corr-25",
                   "attempt": 1, "process": "chatty-worker"} == line  # fmt: skip
    assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16  # its attempt's span (console exporter)
    # The same line on the worker's stderr, as JSON (AF_LOG_FORMAT=json).
    assert any(json.loads(text).get("run_id") == run_id for text in stderr.read_text().splitlines()
               if text.startswith("{"))  # fmt: skip
    # Filters: another agent's lines are not this one's.
    by_agent = await asyncio.to_thread(_logs, nats_url, "--agent", "chatty")
    assert by_agent and all(record["agent"] == "chatty" for record in by_agent)
    assert not await asyncio.to_thread(_logs, nats_url, "--run", "0" * 32)


async def test_a_sandboxed_agents_own_log_line_reaches_af_logs_with_its_run(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, nats_url: str, tmp_path: Path
) -> None:
    with chatty_worker(nats_url, tmp_path, sandbox=True):
        spec = TaskSpec("chatty", {"value": 4}, tenant="acme", correlation_id="corr-sandboxed")
        run_id = (await queue.enqueue(spec)).run_id

        async def succeeded() -> bool:
            state = await get_run(mesh_js, run_id)
            return state is not None and state.status is RunStatus.SUCCEEDED

        await eventually(succeeded, 60, "the sandboxed chatty run succeeded", every=0.1)

        async def found() -> list[dict[str, Any]]:
            return await asyncio.to_thread(_logs, nats_url, "--run", run_id)

        lines = await eventually(found, 10, f"a log line of run {run_id}", every=0.2)
    [line] = lines
    assert line["msg"] == "doubling 4.0" and line["logger"] == "tests.chatty" and line["level"] == "INFO"
    assert line | {"run_id": run_id, "agent": "chatty", "tenant": "acme", "correlation_id": "corr-sandboxed",
                   "process": "chatty-worker", "sandboxed": True} == line  # fmt: skip
    assert line["invocation"] and len(line["trace_id"]) == 32


async def test_a_full_log_buffer_drops_and_counts_and_never_blocks_the_caller(
    nc: Client, mesh_js: JetStreamContext
) -> None:
    handler = LogStream("drop-test", capacity=3)
    record = logging.LogRecord("t", logging.INFO, __file__, 0, "line %d", (1,), None)
    token = trace.run_labels.set(trace.Labels("r" * 32, "a", "t"))
    try:
        for _ in range(5):
            handler.emit(record)  # no NATS connection yet: buffered, then dropped
    finally:
        trace.run_labels.reset(token)
    assert handler.dropped == 2
    sub = await nc.subscribe(names.log_subject("drop-test"))
    await handler.start(nc)
    await handler.stop()
    got = [json.loads((await sub.next_msg(timeout=2)).data) for _ in range(4)]
    assert got[0]["msg"] == "2 log records dropped (buffer full or NATS away)" and got[0]["dropped"] == 2
    assert [g["run_id"] for g in got[1:]] == ["r" * 32] * 3


async def test_logs_follow_prints_a_record_published_after_it_started(
    nc: Client, mesh_js: JetStreamContext, nats_url: str
) -> None:
    run_id = uuid.uuid4().hex
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "logs", "-f", "--run", run_id, "-o", "json",
        env={**os.environ, "AF_NATS_URL": nats_url}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    handler = LogStream("follow-test")
    await handler.start(nc)
    try:
        assert follower.stdout is not None
        for said in ("first", "then, after it was printed"):
            token = trace.run_labels.set(trace.Labels(run_id, "chatty", "acme"))
            try:
                handler.emit(logging.LogRecord("t", logging.WARNING, __file__, 0, said, None, None))
            finally:
                trace.run_labels.reset(token)
            line = json.loads(await asyncio.wait_for(follower.stdout.readline(), 15))
            assert line["msg"] == said and line["run_id"] == run_id and line["process"] == "follow-test"
    finally:
        await handler.stop()
        follower.terminate()
        await follower.wait()


@pytest.fixture
def access_log_on_stderr() -> Iterator[None]:
    """The access log as a served gateway sets it up (its own stderr handler, not propagating)."""
    log_access_to_stderr(True)
    try:
        yield
    finally:
        access = logging.getLogger(ACCESS_LOGGER)
        for handler in list(access.handlers):
            access.removeHandler(handler)
        access.propagate, access.level = True, logging.NOTSET


async def test_the_gateways_access_log_line_is_in_af_logs_with_its_fields(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str, nats_url: str,
    access_log_on_stderr: None,
) -> None:  # fmt: skip
    process, correlation = f"gateway-{uuid.uuid4().hex[:8]}", f"corr-{uuid.uuid4().hex}"
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2, worker=None, dedicated=False)
    gateway = Gateway(Settings(), example_registry(), parts)
    async with log_stream(nc, process, Settings(log_stream=True)), served(gateway, nc, database_url) as api:
        resp = await api.get("/api/v1/agents", headers={"X-Correlation-ID": correlation})
        assert resp.status == 200

        async def found() -> list[dict[str, Any]]:
            lines = await asyncio.to_thread(_logs, nats_url, "--process", process)
            return [line for line in lines if line.get("logger") == ACCESS_LOGGER]

        [line] = await eventually(found, 10, "the access log line in AF_LOGS", every=0.2)
    assert line | {"method": "GET", "path": "/api/v1/agents", "status": 200, "correlation_id": correlation,
                   "process": process, "level": "INFO"} == line  # fmt: skip
    assert line["latency_ms"] >= 0 and json.loads(line["msg"])["path"] == "/api/v1/agents"
