"""The Agent Factory Grafana dashboard, built with Grafana's typed builders.

``make dashboards`` writes ``dashboards/agent-factory.json`` from this file; a
test fails when the committed JSON differs from what it generates, and
``make verify-monitoring`` runs every panel's query against a real Prometheus
scraping a running ``agent-factory up`` (a panel whose metric nobody exports
fails there). Edit this file, never the JSON.

Every query reads the gateway's ``/metrics``, which merges the series of each
worker pool and stream processor (labelled ``worker``): sum over ``worker``,
never pick one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).parent / "dashboards" / "agent-factory.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
AGENT = 'agent=~"$agent"'
TENANT = 'tenant=~"$tenant"'
TASKS = f"{AGENT}, {TENANT}"  # the task series carry both (mesh/queue/metrics.py)
RATE = "$__rate_interval"

Target = tuple[str, str]  # (PromQL, legend)


# Histograms whose buckets carry the trace id of a traced run (OpenMetrics exemplars):
# their panels show them as points that link to the trace.
WITH_EXEMPLARS = ("af_task_wait_seconds_bucket", "af_task_run_seconds_bucket")


def _query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return query.exemplar(any(name in expr for name in WITH_EXEMPLARS))


def series(title: str, description: str, unit: str, *targets: Target) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    for i, (expr, legend) in enumerate(targets):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel.height(8).span(8)


def single(title: str, description: str, unit: str, expr: str) -> stat.Panel:
    panel = stat.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    return panel.with_target(_query(expr, "", "A")).height(4).span(4)


def states(title: str, description: str, expr: str, legend: str) -> statetimeline.Panel:
    panel = statetimeline.Panel().title(title).description(description).datasource(DATASOURCE)
    return panel.with_target(_query(expr, legend, "A")).height(8).span(12)


def quantiles(metric: str, by: str, selector: str = AGENT) -> list[Target]:
    return [
        (f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
         f"p{round(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.95, 0.99)
    ]  # fmt: skip


def by_agent_rate(metric: str, extra: str = "") -> Target:
    return f"sum by (agent) (rate({metric}{{{AGENT}{extra}}}[{RATE}]))", "{{agent}}"


ROWS: list[tuple[str, list[timeseries.Panel | stat.Panel | statetimeline.Panel]]] = [
    ("Fleet health", [
        single("Processes reporting", "Worker pools and stream processors whose metrics the gateway "
               "read in this scrape (af_worker_metrics_up); fewer than you run: one is down or hung.", "none",
               "sum(af_worker_metrics_up)"),
        single("NATS connected", "1 when every process's NATS connection is up.", "bool",
               "min(af_nats_connected)"),
        single("Stalled lanes", "Lanes whose max_ack_pending is full: JetStream delivers nothing more "
               "to them, without an error.", "none",
               f"count(max by (agent, priority) (af_queue_ack_pending_ratio{{{AGENT}}}) >= 1) or vector(0)"),
        single("Tasks waiting", "Tasks queued, not yet delivered, over every lane.", "none",
               f"sum(af_queue_depth{{{AGENT}}})"),
        single("Dead letters", "Dead letters waiting for a replay or a purge.", "none",
               f"sum(af_dlq_size{{{AGENT}}})"),
        single("Breakers open", "Agents whose fleet-wide circuit breaker is open.", "none",
               f"count(max by (agent) (af_fleet_breaker_state{{{AGENT}}}) == 2) or vector(0)"),
    ]),
    ("Throughput", [
        series("Enqueued per second", "Tasks accepted onto the queue.", "ops",
               by_agent_rate("af_tasks_enqueued_total", f", {TENANT}")),
        series("Finished per second, by outcome", "Runs that ended: succeeded, failed (dead-lettered), "
               "expired, cancelled; and attempts that raised.", "ops",
               (f"sum by (agent, outcome) (rate(af_tasks_finished_total{{{TASKS}}}[{RATE}]))",
                "{{outcome}} {{agent}}"),
               (f"sum by (agent) (rate(af_task_attempts_failed_total{{{TASKS}}}[{RATE}]))",
                "failed attempts {{agent}}")),
        series("Failure ratio", "Failed attempts over finished ones (failed + succeeded).", "percentunit",
               (f"sum by (agent) (rate(af_task_attempts_failed_total{{{TASKS}}}[{RATE}])) / "
                f"(sum by (agent) (rate(af_task_attempts_failed_total{{{TASKS}}}[{RATE}])) + "
                f'sum by (agent) (rate(af_tasks_finished_total{{{TASKS}, outcome="succeeded"}}[{RATE}])))',
                "{{agent}}")),
    ]),
    ("Queues", [
        series("Queue depth", "Tasks waiting per agent and priority (0 is the highest).", "none",
               (f"sum by (agent, priority) (af_queue_depth{{{AGENT}}})", "{{agent}} p{{priority}}")),
        series("Oldest waiting task", "Age of the oldest task not yet delivered, per lane.", "s",
               (f"max by (agent, priority) (af_queue_oldest_task_age_seconds{{{AGENT}}})",
                "{{agent}} p{{priority}}")),
        series("Lane fill", "In-flight tasks over max_ack_pending; at 1 the lane is stalled.", "percentunit",
               (f"max by (agent, priority) (af_queue_ack_pending_ratio{{{AGENT}}})",
                "{{agent}} p{{priority}}")),
        series("Worker concurrency in use", "Tasks the worker pools are running now.", "none",
               (f"sum by (agent) (af_worker_tasks_in_progress{{{AGENT}}})", "{{agent}}"),
               ("sum by (worker) (af_worker_tasks_in_progress)", "pool {{worker}}")),
    ]),
    ("Latency", [
        series("Wait (enqueue to start)", "Percentiles of the time tasks wait in the queue.", "s",
               *quantiles("af_task_wait_seconds", "agent", TASKS)),
        series("Run time", "Percentiles of the agents' handler run time.", "s",
               *quantiles("af_task_run_seconds", "agent", TASKS)),
        series("Run time per version", "p95 handler run time per agent version.", "s",
               (f"histogram_quantile(0.95, sum by (le, agent, version) "
                f"(rate(af_task_run_seconds_bucket{{{TASKS}}}[{RATE}])))", "{{agent}} {{version}}")),
        series("Request/reply and delivery settle time", "Request to reply, delivery to ack, per channel.",
               "s", *quantiles("af_mesh_ack_seconds", "channel", selector="")),
    ]),
    ("Retries, dead letters, expiries", [
        series("Retries per second", "Tasks scheduled for another attempt.", "ops",
               by_agent_rate("af_tasks_retried_total", f", {TENANT}")),
        series("Dead-lettered per second", "Tasks moved to the DLQ (attempts used up, or a permanent error).",
               "ops",
               by_agent_rate("af_tasks_finished_total", f', {TENANT}, outcome="failed"')),
        series("Expired per second", "Tasks whose TTL passed before a worker took them.", "ops",
               by_agent_rate("af_tasks_finished_total", f', {TENANT}, outcome="expired"')),
        series("Dead letters waiting", "Per agent, until replayed or purged.", "none",
               (f"sum by (agent) (af_dlq_size{{{AGENT}}})", "{{agent}}")),
    ]),
    ("Breakers and budgets", [
        states("Fleet breaker state", "0 closed, 1 half-open, 2 open, as the pools follow it.",
               f"max by (agent) (af_fleet_breaker_state{{{AGENT}}})", "{{agent}}"),
        series("Breaker refusals per second", "Calls an open local breaker refused.", "ops",
               by_agent_rate("af_breaker_rejected_total")),
        series("Budget burn", "Spend per tenant over the last hour, beside each budget's limit for its "
               "whole period (agent-factory budget ls shows the period).", "none",
               (f"sum by (tenant, currency) (increase(af_cost_total{{{TENANT}}}[1h]))",
                "{{tenant}} {{currency}}/h"),
               ("max by (budget) (af_budget_limit)", "limit {{budget}}")),
        states("Limits used up", "1 while a hard budget or a quota refuses new work.",
               "max by (limit, kind) (af_limit_spent)", "{{kind}} {{limit}}"),
    ]),
    ("Canary", [
        series("Requests per version", "Executions per agent version over the last 5 minutes "
               "(canary processor): how far a new version's share has come.", "none",
               (f"sum by (agent, version) (af_canary_requests{{{AGENT}}})", "{{agent}} {{version}}")),
        series("Error rate per version", "Failed over all executions per version, last 5 minutes.",
               "percentunit",
               (f"sum by (agent, version) (af_canary_errors{{{AGENT}}}) / "
                f"sum by (agent, version) (af_canary_requests{{{AGENT}}} > 0)", "{{agent}} {{version}}")),
        series("p99 duration per version", "Last 5 minutes; none below the processor's minimum samples.", "s",
               (f"max by (agent, version) (af_canary_duration_p99_seconds{{{AGENT}}})",
                "{{agent}} {{version}}")),
    ]),
    ("Cost and resources", [
        series("Cost per agent", "Priced executions per hour (metering processor, as recorded).", "none",
               (f"sum by (agent, currency) (increase(af_cost_total{{{AGENT}, {TENANT}}}[1h]))",
                "{{agent}} {{currency}}")),
        series("Cost per tenant", "Priced executions per hour.", "none",
               (f"sum by (tenant, currency) (increase(af_cost_total{{{AGENT}, {TENANT}}}[1h]))",
                "{{tenant}} {{currency}}")),
        series("CPU per agent", "CPU seconds per second the executions used.", "none",
               by_agent_rate("af_execution_cpu_seconds_total", f", {TENANT}")),
        series("I/O per agent", "Bytes sent, received and written by executions.", "Bps",
               by_agent_rate("af_execution_network_bytes_total", f", {TENANT}"),
               (f"sum by (agent) (rate(af_execution_written_bytes_total{{{AGENT}, {TENANT}}}[{RATE}]))",
                "written {{agent}}")),
    ]),
    ("Sandbox", [
        series("Invocations by outcome", "Sandboxed invocations per second: ok, or why they failed.", "ops",
               (f"sum by (agent, outcome) (rate(af_sandbox_invocations_total{{{AGENT}}}[{RATE}]))",
                "{{agent}} {{outcome}}")),
        series("CPU per invocation", "CPU time of invocations, p50 and p95.", "s",
               *quantiles("af_sandbox_cpu_seconds", "agent")[:2]),
        series("Peak memory per invocation", "Control group charge (else peak RSS), p50 and p95.", "bytes",
               *quantiles("af_sandbox_memory_peak_bytes", "agent")[:2]),
    ]),
    ("NATS and JetStream", [
        series("Stream messages", "Messages stored per stream.", "none",
               ("max by (stream) (af_jetstream_stream_messages)", "{{stream}}")),
        series("Storage", "File storage used, and the account's limit (0: none of its own).", "bytes",
               ("max(af_jetstream_storage_bytes)", "used"),
               ("max(af_jetstream_storage_limit_bytes)", "limit"),
               ("max by (stream) (af_jetstream_stream_bytes)", "{{stream}}")),
        series("Recorder and consumer lag", "Messages durable consumers have not been delivered yet.", "none",
               ("max by (stream, consumer) (af_jetstream_consumer_pending_messages)",
                "{{stream}}/{{consumer}}"),
               ("max by (stream, consumer) (af_jetstream_consumer_ack_pending_messages)",
                "unacked {{stream}}/{{consumer}}")),
        series("Channel backlog", "Messages durable channel subscribers have yet to take.", "none",
               ('max by (consumer) (af_jetstream_consumer_pending_messages{stream="AF_CHANNELS"})',
                "{{consumer}}")),
        series("Processor lag", "Records each processor has yet to take from its partitions; events "
               "its topics have yet to copy from AF_EVENTS.", "none",
               ("sum by (worker) (af_processor_lag_messages)", "{{worker}}"),
               ("max by (stream) (af_jetstream_source_lag_messages)", "copy into {{stream}}")),
        series("NATS reconnects", "Connections re-established, per process.", "none",
               ("sum by (worker) (increase(af_nats_reconnects_total[1h]))", "{{worker}}")),
    ]),
]  # fmt: skip


def _variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    every = VariableOption(selected=True, text="All", value="$__all")
    return (
        dashboard.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*").current(every)
    )  # fmt: skip


def build() -> dict[str, object]:
    board = (
        dashboard.Dashboard("Agent Factory").uid("agent-factory").tags(["agent-factory"])
        .description("The fleet: queues, latency, failures, breakers, budgets, cost, NATS and JetStream. "
                     "Generated by deployment/monitoring/dashboard.py.")
        .refresh("30s").time("now-1h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(_variable("agent", "Agent", "label_values(af_tasks_enqueued_total, agent)"))
        .with_variable(_variable("tenant", "Tenant", "label_values(af_tasks_enqueued_total, tenant)"))
    )  # fmt: skip
    ids = iter(range(1, 1000))  # in order, as Grafana would number them, but fixed in the JSON
    for title, panels in ROWS:
        board = board.with_row(dashboard.Row(title).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if OUTPUT.read_text() == render() else f"{OUTPUT} is stale: run `make dashboards`")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
