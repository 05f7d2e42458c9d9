"""The fuzz run's gateway: the integration tests' ``api`` fixture, on this session's
real NATS and PostgreSQL (tests/conftest.py)."""

from tests.integration.gateway.conftest import api

__all__ = ["api"]
