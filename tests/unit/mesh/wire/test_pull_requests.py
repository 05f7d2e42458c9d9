"""Pull request subjects and bodies: what the server's API expects, byte for byte."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from mesh.wire.puller import next_subject, request_body


def test_pull_requests_go_to_the_consumer_next_subject_under_the_api_prefix() -> None:
    assert next_subject("$JS.API", "AF_TASKS", "c") == "$JS.API.CONSUMER.MSG.NEXT.AF_TASKS.c"
    assert next_subject("$JS.hub.API", "S", "c") == "$JS.hub.API.CONSUMER.MSG.NEXT.S.c"


@given(
    st.integers(1, 10**6),
    st.none() | st.floats(0.001, 3600),
    st.booleans(),
    st.none() | st.floats(0.001, 1800),
)
def test_request_body_is_what_json_dumps_makes_of_the_fields(
    batch: int, expires_s: float | None, no_wait: bool, heartbeat_s: float | None
) -> None:
    fields: dict[str, object] = {"batch": batch}
    if expires_s is not None:
        fields["expires"] = int(expires_s * 1e9)
    if no_wait:
        fields["no_wait"] = True
    if heartbeat_s is not None:
        fields["idle_heartbeat"] = int(heartbeat_s * 1e9)
    body = request_body(batch, expires_s=expires_s, no_wait=no_wait, heartbeat_s=heartbeat_s)
    assert body == json.dumps(fields).encode()
