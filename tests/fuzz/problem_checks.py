"""Schemathesis checks of our own, loaded by the CLI through ``SCHEMATHESIS_HOOKS``."""

from __future__ import annotations

from typing import Any

import schemathesis

PROBLEM = "application/problem+json"


@schemathesis.check
def errors_are_problems(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx and 5xx is ``application/problem+json`` naming its own status."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return
    given = {name.lower(): values for name, values in response.headers.items()}.get("content-type", [""])
    kind = (given[0] if isinstance(given, list) else given).split(";")[0].strip()
    if kind != PROBLEM:
        raise AssertionError(f"{response.status_code} answered as {kind!r}, not {PROBLEM}")
    status = response.json().get("status")
    if status != response.status_code:
        raise AssertionError(f"a {response.status_code} problem says status {status!r}")


# The hub's upload (POST /api/v1/hub/packages) takes a .glpack as an application/gzip body:
# sent as the binary it is, so cases reach the route (staged, then refused in its operation).
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
