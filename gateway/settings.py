"""One settings model for the whole platform, read from ``AF_*`` env vars and CLI flags.

It lives in the gateway, the layer that assembles the processes (``up``, the
workers, the API) and hands each lower layer its values as arguments: ``mesh``,
``agents`` and ``streams`` read no settings of their own. Defaults are the
embedded dev mode; production values are documented in the README ("Settings").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.embedded import check_sync_interval
from streams.processors import PROCESSORS

__all__ = ["LogFormat", "Settings", "SyncInterval", "TraceExporter"]

SyncInterval = Annotated[str, AfterValidator(check_sync_interval)]
TraceExporter = Literal["none", "console", "otlp-grpc", "otlp-http"]
LogFormat = Literal["auto", "json", "text"]


class Settings(BaseSettings):
    """Platform settings. Every field can be set with ``AF_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="AF_", extra="ignore")

    data_dir: Path = Field(default=Path(".agent-factory"), description="State of the embedded mode")
    nats_url: str | None = Field(default=None, description="External NATS; None = embedded")
    database_url: str | None = Field(
        default=None,
        description="External PostgreSQL, else embedded; its user owns the tables and runs the migrations",
    )
    database_app_role: str = Field(
        default="af_app", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The role the platform works as (owns nothing, so row security binds it; "
        "migration 007 creates it where it may)",
    )  # fmt: skip
    database_app_password: SecretStr | None = Field(default=None, description="database_app_role's password")
    database_pool_size: int = Field(default=10, ge=1, le=200, description="Connections per gateway process")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_token: str | None = Field(default=None, description="Bearer token; generated in dev mode")
    auth_enabled: bool = True
    workers: int = Field(default=1, ge=0, le=64, description="Worker pools started by `up`")
    worker_concurrency: int = Field(default=16, ge=1, le=4096)
    drain_timeout_s: float = Field(default=30.0, gt=0)
    sandbox: bool = Field(
        default=True,
        description="Pool workers run each task in a fresh confined child of the agent's template "
        "(docs/sandbox.md); False: in the worker's own process",
    )
    max_payload_bytes: int = Field(default=1_048_576, ge=1024)
    api_rate_per_s: float = Field(
        default=2000.0, ge=0,
        description="API requests a second per bearer token (per client address without one), "
        "past a burst of api_burst: then 429 with Retry-After; 0: no limit",
    )  # fmt: skip
    api_burst: int = Field(default=4000, ge=1, description="Requests a token may make at once past its rate")
    operation_heartbeat_s: float = Field(
        default=2.0, gt=0, le=60, description="How often a gateway marks the operations it runs alive"
    )
    operation_stale_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="Silence after which another gateway takes an operation over (resumes or fails it)",
    )  # fmt: skip
    operation_keep_days: float = Field(
        default=30.0, gt=0, le=3650,
        description="Finished operations (their history, their idempotency keys) are deleted after this",
    )  # fmt: skip
    trust_policy_file: Path | None = Field(
        default=None,
        description="JSON of the packages' trust policy: {'default': {'require_signature', 'trusted_keys': "
        "{key id: base64 public key}}, 'tenants': {tenant: policy}} (docs/hub.md); None: signatures optional",
    )  # fmt: skip
    hub_max_package_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1024, le=1 << 30, description="The largest .glpack the hub takes"
    )
    hub_test_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="How long a package's own tests may run at its publish"
    )
    access_log: bool = Field(
        default=True, description="One JSON line per API request on stderr (logger gateway.access)"
    )
    stream_replicas: int = Field(default=1, ge=1, le=5)
    nats_cluster_size: int = Field(
        default=1, ge=1, le=5,
        description="Embedded nats-server nodes `up` starts; more than 1 is a JetStream cluster "
        "whose streams get that many replicas (unless stream_replicas is set higher than 1)",
    )  # fmt: skip
    processors: str = Field(
        default="all",
        description="Stream processors `up` starts (docs/processors.md): 'all', 'off', or some of "
        + ", ".join(PROCESSORS)
        + " separated by commas",
    )
    agents: str = Field(
        default="", description="Your agents besides the examples: 'module:Class,…' (see agents.registry)"
    )
    nats_sync_interval: SyncInterval = Field(
        default="default",
        description="How often the embedded nats-server fsyncs JetStream files: 'default' (2 min), "
        "'always' (before each ack) or a duration ('10s'); see docs/durability.md",
    )

    trace_exporter: TraceExporter = Field(
        default="none",
        description="Where spans go (docs/observability.md): 'none' (no SDK loaded, nothing on the "
        "hot path), 'console' (JSON on stdout), 'otlp-grpc' or 'otlp-http' (to trace_endpoint)",
    )
    trace_endpoint: str | None = Field(
        default=None,
        description="The OTLP collector, e.g. http://otel-collector:4317 (grpc) or "
        "http://otel-collector:4318/v1/traces (http); None: the exporter's default and OTEL_EXPORTER_OTLP_*",
    )
    trace_sample_ratio: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Share of new traces recorded (parent-based: a traced caller's choice is followed); "
        "None: 1.0 in the embedded dev mode, 0.1 otherwise",
    )  # fmt: skip
    log_format: LogFormat = Field(
        default="auto",
        description="Log lines on stderr: 'json' (one object a line), 'text' (for people), "
        "'auto': text in the embedded dev mode, JSON otherwise",
    )
    log_level: str = Field(default="INFO", description="Level of the platform's processes' logs")
    log_stream: bool = Field(
        default=True, description="Publish each process's log records to AF_LOGS (agent-factory logs)"
    )
    log_buffer: int = Field(
        default=10_000, ge=1,
        description="Log records a process holds for the stream; past it new ones are dropped and counted",
    )  # fmt: skip
    metrics_tenant_cap: int = Field(
        default=100, ge=1,
        description="Distinct tenant label values a process gives the af_task* metrics; later tenants "
        "are counted as tenant=\"other\" (docs/observability.md)",
    )  # fmt: skip

    @property
    def embedded(self) -> bool:
        """The embedded dev mode: `up` starts its own NATS (no external one named)."""
        return self.nats_url is None

    @property
    def sample_ratio(self) -> float:
        if self.trace_sample_ratio is not None:
            return self.trace_sample_ratio
        return 1.0 if self.embedded else 0.1

    @property
    def log_json(self) -> bool:
        return self.log_format == "json" or (self.log_format == "auto" and not self.embedded)

    @field_validator("processors")
    @classmethod
    def _known_processors(cls, value: str) -> str:
        chosen = processor_names(value)  # raises on an unknown name
        return ",".join(chosen) if chosen or value.strip().lower() == "off" else "off"

    @property
    def processor_names(self) -> list[str]:
        return processor_names(self.processors)


def processor_names(value: str) -> list[str]:
    """'all', 'off' (or empty) or a comma list of processors, as a list; ``ValueError``
    names an unknown one."""
    text = value.strip().lower()
    if text == "all":
        return list(PROCESSORS)
    if text in ("off", "none", ""):
        return []
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PROCESSORS]
    if unknown:
        known = ", ".join(PROCESSORS) or "none yet"
        names = ", ".join(unknown)
        raise ValueError(f"unknown stream processor(s) {names} (known: {known}; or 'all', 'off')")
    return list(dict.fromkeys(chosen))
