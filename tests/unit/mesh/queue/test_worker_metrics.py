"""Merging worker pools' metrics into the gateway's exposition (gateway.worker_metrics)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.worker_metrics import (
    TARGETS_DIR,
    WorkerTarget,
    _merge,
    merge_families,
    merged_metrics,
    serve_process_metrics,
    serve_worker_metrics,
    worker_targets,
)


def _process(completed: int, *, with_worker_label: bool = False) -> str:
    """The exposition of one process: a counter and a histogram, as the mesh's."""
    registry = CollectorRegistry()
    labels = ["agent", "worker"] if with_worker_label else ["agent"]
    values = ["a", "inner"] if with_worker_label else ["a"]
    Counter("af_tasks_finished_total", "Tasks that succeeded", labels, registry=registry).labels(*values).inc(
        completed
    )
    Histogram("af_task_run_seconds", "Handler run time", ["agent"], registry=registry, buckets=(1,)).labels(
        "a"
    ).observe(0.5)
    return generate_latest(registry).decode()


def _render(sources: list[tuple[dict[str, str], str]]) -> str:
    class Merged(Collector):
        def collect(self) -> Iterable[Metric]:
            return merge_families((labels, text_string_to_metric_families(t)) for labels, t in sources)

    return generate_latest(Merged()).decode()


def _values(text: str, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample
    }


def test_each_pools_samples_are_labelled_with_its_worker_under_one_help_and_type() -> None:
    text = _render([({}, _process(0)), ({"worker": "w0"}, _process(3)), ({"worker": "w1"}, _process(4))])
    assert _values(text, "af_tasks_finished_total") == {
        (("agent", "a"),): 0.0,
        (("agent", "a"), ("worker", "w0")): 3.0,
        (("agent", "a"), ("worker", "w1")): 4.0,
    }
    assert len(_values(text, "af_task_run_seconds_bucket")) == 2 * 3  # le="1.0" and "+Inf", 3 processes
    types = [line for line in text.splitlines() if line.startswith("# ")]
    assert len(types) == len(set(types))  # _created series too: one HELP/TYPE each
    assert "# TYPE af_tasks_finished_total counter" in types


def test_a_label_named_worker_of_the_pools_own_is_kept_as_exported_worker() -> None:
    text = _render([({"worker": "w0"}, _process(2, with_worker_label=True))])
    assert _values(text, "af_tasks_finished_total") == {
        (("agent", "a"), ("exported_worker", "inner"), ("worker", "w0")): 2.0
    }


def test_a_family_of_another_type_in_a_pool_is_left_out_not_exposed_twice() -> None:
    registry = CollectorRegistry()
    Gauge("af_tasks_finished_total", "not a counter", registry=registry).set(9)
    text = _render([({}, _process(1)), ({"worker": "w0"}, generate_latest(registry).decode())])
    assert _values(text, "af_tasks_finished_total") == {(("agent", "a"),): 1.0}


def test_an_openmetrics_merge_keeps_a_pools_exemplars_and_takes_a_pool_answering_in_the_text_format() -> None:
    traced = CollectorRegistry()
    histogram = Histogram("af_task_run_seconds", "Handler run time", ["agent"], registry=traced, buckets=(1,))
    histogram.labels("a").observe(0.5, {"trace_id": "ab" * 16})
    Counter("af_tasks_finished", "Runs that ended", ["agent"], registry=traced).labels("a").inc()
    openmetrics = openmetrics_exposition.generate_latest(traced)
    older = _process(2).encode()  # a pool of another version: text format, _created as gauges
    text = _merge([("w0", (openmetrics, True)), ("w1", (older, False))], openmetrics=True).decode()
    families = {f.name: f for f in parse_openmetrics(text)}  # valid OpenMetrics, # EOF and all
    # the pools' samples (this process's own may carry exemplars of other tests' traced runs)
    buckets = [
        s for s in families["af_task_run_seconds"].samples if s.exemplar is not None and "worker" in s.labels
    ]
    assert [(s.labels["worker"], s.exemplar.labels) for s in buckets] == [("w0", {"trace_id": "ab" * 16})]
    finished = {s.labels["worker"]: s.value for s in families["af_tasks_finished"].samples
                if s.name == "af_tasks_finished_total" and "worker" in s.labels}  # fmt: skip
    assert finished == {"w0": 1.0, "w1": 2.0}
    # Asked for the text format, the same pools merge without exemplars.
    plain = _merge([("w0", (generate_latest(traced), False)), ("w1", (older, False))]).decode()
    assert "trace_id" not in plain and "# EOF" not in plain


def test_targets_of_pools_that_are_gone_are_removed_and_unreadable_files_skipped(tmp_path: Path) -> None:
    folder = tmp_path / TARGETS_DIR
    folder.mkdir()
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    gone = WorkerTarget(worker="w-gone", url="http://127.0.0.1:1/metrics", pid=int(exited.stdout))
    alive = WorkerTarget(worker="w-alive", url="http://127.0.0.1:2/metrics", pid=os.getpid())
    (folder / f"{gone.pid}.json").write_text(gone.model_dump_json())
    (folder / "self.json").write_text(alive.model_dump_json())
    (folder / "junk.json").write_text("{not json")
    assert worker_targets(tmp_path) == [alive]
    assert not (folder / f"{gone.pid}.json").exists()
    assert worker_targets(tmp_path / "no-such-dir") == []


async def test_a_served_pool_is_in_the_merged_exposition_and_says_when_it_cannot_be_read(
    tmp_path: Path,
) -> None:
    async with serve_worker_metrics(tmp_path, "w0") as url:
        assert url.startswith("http://127.0.0.1:")
        [target] = worker_targets(tmp_path)
        assert target.url == url
        text = (await merged_metrics(tmp_path)).decode()
        assert _values(text, "af_worker_metrics_up") == {(("worker", "w0"),): 1.0}
        # This process is both "gateway" and "w0" here: each sample once per source.
        rss = _values(text, "process_resident_memory_bytes")
        assert {labels for labels in rss} == {(), (("worker", "w0"),)}
        unreachable = WorkerTarget(worker="w1", url=url.replace("/metrics", "/gone"), pid=os.getpid())
        (tmp_path / TARGETS_DIR / "other.json").write_text(unreachable.model_dump_json())
        text = (await merged_metrics(tmp_path)).decode()
        assert _values(text, "af_worker_metrics_up") == {(("worker", "w0"),): 1.0, (("worker", "w1"),): 0.0}
    assert not (tmp_path / TARGETS_DIR / f"{os.getpid()}.json").exists()


async def test_a_process_serving_from_a_thread_is_merged_as_a_pool_is_and_unnamed_once_it_stops(
    tmp_path: Path,
) -> None:
    # A stream processor's way: its event loop is Faust's, the server a thread of its own.
    with serve_process_metrics(tmp_path, "processor-metering") as url:
        [target] = worker_targets(tmp_path)
        assert target.url == url and target.worker == "processor-metering"
        text = (await merged_metrics(tmp_path)).decode()
        assert _values(text, "af_worker_metrics_up") == {(("worker", "processor-metering"),): 1.0}
    assert worker_targets(tmp_path) == []
