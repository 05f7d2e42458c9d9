"""What each process of the platform tells its operator: traces (OpenTelemetry, exported
as the settings say) and log lines (on stderr, and into the ``AF_LOGS`` stream that
``agent-factory logs`` reads). docs/observability.md has the whole story."""

from gateway.telemetry.logs import LogStream, configure_logging, log_stream
from gateway.telemetry.tracing import tracing

__all__ = ["LogStream", "configure_logging", "log_stream", "tracing"]
