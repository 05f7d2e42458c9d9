"""Every worker pool's metrics on the gateway's one ``/metrics``.

`up` runs its worker pools as separate processes (``agent-factory worker``),
each with its own prometheus_client registry: the counters of the task path
(``af_tasks_finished_total``, the wait/run histograms, …) live there, not in
the gateway. So each pool serves its registry on a port of its own
(loopback unless told otherwise) and names it in
``<data dir>/worker-metrics/<pid>.json``; the gateway's ``/metrics`` scrapes
the pools that still run and merges them into its own exposition: one family
per name (one HELP/TYPE), each pool's samples labelled ``worker="<name>"``,
the gateway's own samples as they are. ``sum by (agent) (…)`` is then the
platform's total, each sample counted once.

``af_worker_metrics_up{worker}`` says whether a pool's samples are in this
scrape: at 0 they are missing, not zero. A pool that restarts starts its
series from 0 again, which Prometheus reads as a counter reset.

Two formats, as the scraper asks (``Accept``): the Prometheus text format, and
OpenMetrics (``application/openmetrics-text``, what Prometheus asks for first),
the only one that carries exemplars (the trace id of a traced run beside its
latency bucket, docs/observability.md). The gateway asks its pools for the
format it was asked for and parses each answer by its content type, so the
exemplars survive the merge.

Nothing changes on the task path: an ``inc()`` stays an add under a thread
lock (prometheus_client's multiprocess mode would make it an mmap write;
README "Metrics" has the numbers).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from pydantic import BaseModel, ValidationError

from mesh.embedded import pid_alive

__all__ = [
    "CONTENT_TYPE",
    "TARGETS_DIR",
    "WorkerTarget",
    "merge_families",
    "merged_metrics",
    "metrics_response",
    "serve_process_metrics",
    "serve_worker_metrics",
    "wants_openmetrics",
    "worker_targets",
]

log = logging.getLogger(__name__)

TARGETS_DIR = "worker-metrics"  # under the data dir: one <pid>.json per running pool
SCRAPE_TIMEOUT_S = 3.0  # per pool; Prometheus' own scrape_timeout defaults to 10 s
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]  # aiohttp sets the charset itself
OPENMETRICS = "application/openmetrics-text"
_ACCEPT_OPENMETRICS = f"{OPENMETRICS}; version=1.0.0, text/plain; version=0.0.4; q=0.5"
WORKER_LABEL = "worker"


class WorkerTarget(BaseModel):
    """Where a running pool serves its metrics (the content of its target file)."""

    worker: str
    url: str
    pid: int


@asynccontextmanager
async def serve_worker_metrics(
    data_dir: Path, worker: str, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve this process's registry on ``http://host:port/metrics`` (port 0: any
    free one) and name it in the data dir while the block runs; yields the URL."""
    app = web.Application()
    app.router.add_get("/metrics", _serve_registry)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        with _named(data_dir, worker, host, runner.addresses[0][1]) as url:
            yield url
    finally:
        await runner.cleanup()


@contextmanager
def serve_process_metrics(data_dir: Path, name: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """As :func:`serve_worker_metrics`, for a process whose event loop is not ours (a
    stream processor is a Faust worker): prometheus_client's own server, in a thread."""
    server, thread = start_http_server(port, addr=host)
    try:
        with _named(data_dir, name, host, server.server_port) as url:
            yield url
    finally:
        server.shutdown()
        thread.join(timeout=5)


@contextmanager
def _named(data_dir: Path, worker: str, host: str, port: int) -> Iterator[str]:
    """Name this process's metrics URL in ``<data dir>/worker-metrics/<pid>.json`` while the
    block runs (the gateway scrapes what is named there); yields the URL."""
    url = f"http://{_reachable(host)}:{port}/metrics"
    target = data_dir / TARGETS_DIR / f"{os.getpid()}.json"
    _write_atomically(target, WorkerTarget(worker=worker, url=url, pid=os.getpid()).model_dump_json())
    try:
        yield url
    finally:
        target.unlink(missing_ok=True)


async def _serve_registry(request: web.Request) -> web.Response:
    openmetrics = wants_openmetrics(request.headers.get("Accept"))
    return metrics_response(_render(REGISTRY, openmetrics), openmetrics)


def wants_openmetrics(accept: str | None) -> bool:
    """Does the scraper take OpenMetrics (as prometheus_client's own server decides)?"""
    return OPENMETRICS in (accept or "")


def metrics_response(body: bytes, openmetrics: bool) -> web.Response:
    """An exposition as the answer to a scrape, with its format's content type."""
    if openmetrics:
        return web.Response(body=body, headers={"Content-Type": openmetrics_exposition.CONTENT_TYPE_LATEST})
    return web.Response(body=body, content_type=CONTENT_TYPE)


def _render(registry: Collector, openmetrics: bool) -> bytes:
    if openmetrics:  # the OpenMetrics modules have no type hints
        rendered: bytes = openmetrics_exposition.generate_latest(registry)  # type: ignore[no-untyped-call]
        return rendered
    return generate_latest(registry)  # type: ignore[arg-type]


def _reachable(host: str) -> str:
    """The address the gateway on this host dials for a pool bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _write_atomically(path: Path, text: str) -> None:
    """The gateway never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(text)
    os.replace(partial, path)


def worker_targets(data_dir: Path) -> list[WorkerTarget]:
    """The pools that named their metrics in ``data_dir`` and still run.

    A pool killed without its cleanup leaves its file behind; it is removed
    here once its pid is gone.
    """
    targets = []
    for path in sorted((data_dir / TARGETS_DIR).glob("*.json")):
        try:
            target = WorkerTarget.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            continue  # gone meanwhile, or not one of ours
        if pid_alive(target.pid):
            targets.append(target)
        else:
            path.unlink(missing_ok=True)
    return targets


async def merged_metrics(data_dir: Path, openmetrics: bool = False) -> bytes:
    """The exposition of this process and of every pool in ``data_dir``, merged: in
    the Prometheus text format, or OpenMetrics (exemplars included)."""
    targets = worker_targets(data_dir)
    if not targets:
        return _render(REGISTRY, openmetrics)
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        scraped = await asyncio.gather(*(_scrape(session, t.url, openmetrics) for t in targets))
    # Parsing grows with pools x series (~10 ms per pool at 10 agents): off the
    # event loop, so the API keeps answering while Prometheus scrapes.
    pools = list(zip(_worker_labels(targets), scraped, strict=True))
    return await asyncio.to_thread(_merge, pools, openmetrics)


Scraped = tuple[bytes, bool]  # an exposition, and whether it is OpenMetrics


def _merge(pools: list[tuple[str, Scraped | None]], openmetrics: bool = False) -> bytes:
    own = _parse((_render(REGISTRY, openmetrics), openmetrics), openmetrics) or []
    sources: list[tuple[Mapping[str, str], list[Metric]]] = [({}, own)]
    up = GaugeMetricFamily(
        "af_worker_metrics_up",
        "1 if this scrape holds the worker pool's metrics; 0: they are missing, not zero",
        labels=[WORKER_LABEL],
    )
    for label, scraped in pools:
        families = _parse(scraped, openmetrics) if scraped is not None else None
        up.add_metric([label], 0.0 if families is None else 1.0)
        if families is not None:
            sources.append(({WORKER_LABEL: label}, families))
    sources.append(({}, [up]))
    return _render(_Families(merge_families(sources)), openmetrics)


async def _scrape(session: aiohttp.ClientSession, url: str, openmetrics: bool = False) -> Scraped | None:
    accept = _ACCEPT_OPENMETRICS if openmetrics else "text/plain"
    try:
        async with session.get(url, headers={"Accept": accept}) as response:
            if response.status == 200:
                return await response.read(), response.content_type == OPENMETRICS
            log.warning("worker metrics at %s: HTTP %d", url, response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("worker metrics at %s: %r", url, exc)
    return None


def _parse(scraped: Scraped, openmetrics: bool) -> list[Metric] | None:
    """The families of an exposition, parsed as its format says; None if unreadable."""
    text, is_openmetrics = scraped
    try:
        if is_openmetrics:
            parse = openmetrics_parser.text_string_to_metric_families
            return list(parse(text.decode()))  # type: ignore[no-untyped-call]
        families = text_string_to_metric_families(text.decode())
        if not openmetrics:
            return list(families)
        # A pool answering in the text format (another version) into an OpenMetrics merge:
        # there, a counter's ``_created`` is a gauge of its own, which OpenMetrics forbids.
        return [f for f in families if not (f.type == "gauge" and f.name.endswith("_created"))]
    except ValueError as exc:  # UnicodeDecodeError included
        log.warning("unreadable worker metrics: %s", exc)
        return None


def _worker_labels(targets: list[WorkerTarget]) -> list[str]:
    """The pools' names, made unique with the pid where two pools share one."""
    names = [t.worker for t in targets]
    return [t.worker if names.count(t.worker) == 1 else f"{t.worker}-{t.pid}" for t in targets]


def merge_families(sources: Iterable[tuple[Mapping[str, str], Iterable[Metric]]]) -> list[Metric]:
    """One family per name, in the order first seen; every sample gets its
    source's labels (a label it had of the same name becomes ``exported_<name>``,
    as Prometheus does). Changes the families given."""
    merged: dict[str, Metric] = {}
    for labels, families in sources:
        for family in families:
            family.samples = [s._replace(labels=_relabel(s.labels, labels)) for s in family.samples]
            into = merged.setdefault(_exposed_name(family), family)
            if into is family:
                continue
            if into.type != family.type:  # a pool of another version; both would be invalid
                log.warning("metric %s is a %s here and a %s there; left out", family.name,
                            into.type, family.type)  # fmt: skip
                continue
            into.samples.extend(family.samples)
    return list(merged.values())


def _exposed_name(family: Metric) -> str:
    """The name on its TYPE line (a counter's family name lacks the ``_total``)."""
    return f"{family.name}_total" if family.type == "counter" else family.name


def _relabel(own: dict[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    if not extra:
        return own
    kept = {(f"exported_{k}" if k in extra else k): v for k, v in own.items()}
    return {**kept, **extra}


class _Families(Collector):
    """What ``generate_latest`` renders: families already collected."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
