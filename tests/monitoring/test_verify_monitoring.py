"""The dashboards and alerts, proven against a real Prometheus (``make verify-monitoring``).

``agent-factory up`` runs a mixed workload (successes, a permanent failure, a
retried task that ends as a dead letter, an expiry, a budget, a breaker opened
by hand, enough runs of one agent for the canary processor's percentiles),
and this process does a request/reply over the mesh. A real Prometheus
scrapes the gateway's ``/metrics`` (and this process's mesh series) every
second with the alert rules loaded. Then every dashboard panel's query and
every alert's expression must be valid PromQL, every metric each one names
must have data (a panel whose metric nobody exports fails here), every panel
must show data, every rule must evaluate without error, and every label on
a live series must be a bounded one. `up` traces (spans to its log), and
Prometheus stores exemplars: the run-latency histogram must have exemplars
whose trace ids are the workload's runs' (OpenMetrics through the gateway's merge).

Needs ``prometheus`` and ``promtool`` (``apt-get install -y prometheus``);
without them the test skips. Not part of ``make test`` (``tests/monitoring``
is outside its test paths): it starts the whole platform (about 20 s).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, start_http_server

from mesh.channels import Mesh
from mesh.embedded import find_free_port
from mesh.envelope import Envelope
from mesh.wire.connection import connect
from tests.integration.gateway.test_up import _start, _state, _stop
from tests.unit.test_metric_names import BOUNDED_LABELS, EXCEPTIONS

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deployment" / "monitoring" / "dashboards" / "agent-factory.json"
RULES = ROOT / "deployment" / "monitoring" / "alerts" / "agent-factory-alerts.yaml"
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or shutil.which("promtool") is None,
    reason="no prometheus/promtool: apt-get install -y prometheus",
)

WORKLOAD = """
import asyncio
from pydantic import BaseModel
from agents import Agent, PermanentError, RunContext
from agents.resilience import BreakerPolicy, Bulkhead, Resilience, RetryPolicy

class In(BaseModel):
    value: float
    sleep_s: float = 0

class Out(BaseModel):
    value: float

class Flaky(Agent[In, Out]):
    key = "flaky"
    Input, Output = In, Out
    resilience = Resilience(
        retry=RetryPolicy(max_attempts=2, backoff_base_s=0.05, jitter=0),
        bulkhead=Bulkhead(max_concurrent=1),
        breaker=BreakerPolicy(min_calls=1000),
    )

    async def run(self, input: In, ctx: RunContext) -> Out:
        await asyncio.sleep(input.sleep_s)
        if input.value == -1:
            raise PermanentError("negative values are not supported")
        if input.value == -2:
            raise RuntimeError("a transient failure, every time")
        return Out(value=input.value * 2)
"""

# Grafana's variables, as "All" selects them.
SUBSTITUTIONS = {"$agent": ".*", "$tenant": ".*", "$__rate_interval": "1m", "${datasource}": ""}
METRIC = re.compile(r"\b(af_[a-z0-9_]+|up)\b(?=\s*[{\[)])")
MESH_SAMPLES = [
    *(f"af_mesh_ack_seconds{s}" for s in ("_bucket", "_count", "_sum", "_created")),
    "af_mesh_ack_outcomes_total", "af_mesh_pending_acks", "af_mesh_messages_total",
]  # fmt: skip
# Series labels Prometheus or the gateway's merge add to every exported label.
ADDED_LABELS = {"__name__", "job", "instance", "le", "quantile"}


class _Api:
    def __init__(self, base: str, token: str | None = None) -> None:
        self.base, self.token = base, token
        self.trace_ids: set[str] = set()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if method == "POST":  # a trace of the test's choosing (sampled): the run's trace id is known
            trace_id = secrets.token_hex(16)
            headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
            self.trace_ids.add(trace_id)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, method=method, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def _poll(read: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not true after {seconds} s (last: {value!r})"
        time.sleep(0.5)


def _panel_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in SUBSTITUTIONS.items():
                expr = expr.replace(name, value)
            found.append((f"panel '{panel['title']}' {target['refId']}", expr))
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, str) and query.startswith("label_values("):
            metric = query.removeprefix("label_values(").split(",")[0]
            found.append((f"variable {variable['name']}", f"count({metric})"))
    return found


def _alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


@dataclass(frozen=True)
class _Platform:
    api: _Api
    target: str  # the gateway, for Prometheus
    nats_url: str


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[_Platform]:
    (tmp_path / "mon_agents.py").write_text(WORKLOAD)
    data_dir = tmp_path / "af"
    port = find_free_port()
    # Tracing on (spans to up.log), so the latency histograms carry exemplars.
    env = {"PYTHONPATH": str(tmp_path), "AF_TRACE_EXPORTER": "console", "AF_TRACE_SAMPLE_RATIO": "1.0"}
    proc = _start(data_dir, port, "--agent", "mon_agents:Flaky", env=env)
    try:
        state = _state(data_dir)
        yield _Platform(_Api(state["api_url"], state["token"]), f"127.0.0.1:{port}", state["nats_url"])
    finally:
        _stop(proc, data_dir)


async def _echo(request: Envelope) -> Any:
    return request.payload


async def _request_and_reply(nats_url: str) -> None:
    nc = await connect(nats_url, name="verify-monitoring")
    try:
        async with Mesh(nc, agent="verify-monitoring") as mesh:
            for durable in (True, False):
                await mesh.serve("echo", _echo, durable=durable)
                assert await mesh.request("echo", {"ping": durable}, durable=durable) is not None
    finally:
        await nc.close()


@pytest.fixture
def mesh_client(platform: _Platform) -> Iterator[str]:
    """A process using the mesh's channels, as library users run them: nothing `up` starts
    sends requests over channels (agents run in the sandbox), so this test process does,
    over the platform's NATS, and serves its mesh series as a scrape target of its own."""
    asyncio.run(_request_and_reply(platform.nats_url))
    port = find_free_port()
    registry = REGISTRY.restricted_registry(MESH_SAMPLES)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, platform: _Platform, mesh_client: str) -> Iterator[_Api]:
    assert PROMETHEUS is not None
    port = find_free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "agent-factory", "static_configs": [{"targets": [platform.target, mesh_client]}]}
        ],
    }))  # fmt: skip
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    api = _Api(f"http://127.0.0.1:{port}")
    try:
        _poll(lambda: _ready(api, proc), 30, "prometheus ready")
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(api: _Api, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "prometheus exited (prometheus.log beside the test's data dir)"
    try:
        with urllib.request.urlopen(api.base + "/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _query(api: _Api, expr: str) -> dict[str, Any]:
    """Prometheus' answer to an instant query; an invalid expression is its 400, returned."""
    try:
        answer: dict[str, Any] = api.call("GET", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read())
    return answer


def _workload(api: _Api) -> list[str]:
    # Successes, a permanent failure, a task retried until it is dead-lettered.
    runs = [api.call("POST", "/api/v1/agents/flaky/runs", {"input": {"value": v}})["run_id"] for v in (1, 2)]
    runs.append(api.call("POST", "/api/v1/agents/flaky/runs", {"input": {"value": -1}})["run_id"])
    runs.append(api.call("POST", "/api/v1/agents/flaky/runs", {"input": {"value": -2}})["run_id"])
    # One slot (the bulkhead): the second waits behind the first past its TTL and expires.
    slow, late = {"input": {"value": 1, "sleep_s": 3}}, {"input": {"value": 2}, "ttl_s": 1}
    runs.append(api.call("POST", "/api/v1/agents/flaky/runs", slow)["run_id"])
    runs.append(api.call("POST", "/api/v1/agents/flaky/runs", late)["run_id"])
    runs += [
        api.call("POST", "/api/v1/agents/fuel-combustion/runs",
                 {"input": {"fuel": "diesel", "quantity": q, "unit": "L"}})["run_id"]
        for q in range(1, 25)  # past the canary processor's 20 samples: its percentiles
    ]  # fmt: skip
    api.call("PUT", "/api/v1/budgets/mon-test", {"tenant": "default", "limit": 1000, "period": "month"})
    return runs


def test_every_panel_and_alert_query_is_valid_and_has_data(platform: _Platform, prometheus: _Api) -> None:
    started = time.monotonic()
    gateway = platform.api
    runs = _workload(gateway)

    def finished() -> bool:
        states = [gateway.call("GET", f"/api/v1/runs/{r}")["status"] for r in runs]
        return all(s in {"succeeded", "failed", "expired", "cancelled"} for s in states)

    _poll(finished, 90, "every run of the workload finished")
    # A breaker opened by hand: the pools follow it (af_fleet_breaker_state 2).
    opened = {"action": "open", "open_for_s": 600, "reason": "test", "by": "verify-monitoring"}
    gateway.call("POST", "/api/v1/breakers/flaky", opened)

    exprs = _panel_exprs() + _alert_exprs()
    metrics = sorted({m for _, expr in exprs for m in METRIC.findall(expr)})

    invalid = [f"{where}: {answer.get('error')}" for where, expr in exprs
               if (answer := _query(prometheus, expr))["status"] != "success"]  # fmt: skip
    assert invalid == [], "invalid PromQL"

    # Every metric has data, then every panel shows some (a rate needs two scrapes).
    _wait_for_data(
        prometheus, [(m, f"count({m})") for m in metrics], "metrics nothing exports under the workload"
    )
    panels = [(where, expr) for where, expr in exprs if not where.startswith("alert")]
    _wait_for_data(prometheus, panels, "panels that show nothing under the workload")

    # Every process of `up` is in the scrape: its pool and each stream processor.
    processes = {"worker-0", "processor-metering", "processor-breaker", "processor-canary"}

    def scraped() -> set[str]:
        answer = _query(prometheus, "af_worker_metrics_up == 1")["data"]["result"]
        return {series["metric"]["worker"] for series in answer}

    _poll(lambda: scraped() == processes, 60, f"every process scraped: {processes}")

    # Prometheus loaded every rule and evaluates each without an error.
    alerts = sorted(where.removeprefix("alert ") for where, _ in _alert_exprs())
    assert sorted(r["name"] for r in _rules(prometheus)) == alerts
    # An unevaluated rule's lastEvaluation is Go's zero time, year 1.
    _poll(lambda: all(r["lastEvaluation"] > "2000" for r in _rules(prometheus)), 30, "every rule evaluated")
    assert [r["name"] for r in _rules(prometheus) if r["health"] != "ok"] == []

    # Every label on every live series is bounded (the unit test checks the definitions).
    series = _query(prometheus, 'count by (__name__) ({__name__=~"af_.+"})')["data"]["result"]
    unbounded = []
    for name in (s["metric"]["__name__"] for s in series):
        labels = _labels_of(prometheus, name)
        unbounded += [f"{name}{{{lb}}}" for lb in labels - BOUNDED_LABELS - ADDED_LABELS
                      if (name.removesuffix("_total"), lb) not in EXCEPTIONS]  # fmt: skip
    assert unbounded == []

    # Exemplars: the traced runs' trace ids beside their run-time buckets, scraped as OpenMetrics.
    exemplars = _poll(lambda: _exemplar_trace_ids(prometheus, "af_task_run_seconds_bucket"), 30, "exemplars")
    assert exemplars <= gateway.trace_ids, "exemplars whose trace ids are none of the runs'"
    print(f"\nverify-monitoring: {len(exprs)} queries, {len(metrics)} metrics, "
          f"{time.monotonic() - started:.0f} s after up was ready")  # fmt: skip


def _wait_for_data(prometheus: _Api, checks: list[tuple[str, str]], what: str, seconds: float = 90) -> None:
    """Poll until every ``(where, expr)`` answers with data; fail naming those that do not."""
    deadline = time.monotonic() + seconds
    while left := [where for where, expr in checks if not _query(prometheus, expr)["data"]["result"]]:
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {seconds} s: {left}")
        time.sleep(0.5)


def _exemplar_trace_ids(prometheus: _Api, series: str) -> set[str]:
    """The trace ids of the exemplars Prometheus stored for ``series`` in the last 10 minutes."""
    now = time.time()
    query = urllib.parse.urlencode({"query": series, "start": now - 600, "end": now + 60})
    answer = prometheus.call("GET", f"/api/v1/query_exemplars?{query}")["data"]
    return {e["labels"]["trace_id"] for s in answer for e in s["exemplars"]}


def _rules(prometheus: _Api) -> list[dict[str, Any]]:
    groups = prometheus.call("GET", "/api/v1/rules")["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _labels_of(prometheus: _Api, name: str) -> set[str]:
    series = prometheus.call("GET", "/api/v1/series?" + urllib.parse.urlencode({"match[]": name}))["data"]
    return {label for s in series for label in s}
