"""A NATS URL list (a cluster's nodes): credentials reach every node, nothing secret is printed."""

from __future__ import annotations

from mesh.wire.connection import credentials, redacted


def test_credentials_come_from_the_first_url_that_has_them() -> None:
    urls = "nats://n0:4222,nats://app:s3cret@n1:4222,nats://other:pw@n2:4222"
    assert credentials(urls) == {"user": "app", "password": "s3cret"}
    assert credentials("nats://TOKEN@n0:4222") == {"token": "TOKEN"}
    assert credentials("nats://n0:4222,nats://n1:4222") == {}


def test_every_url_of_a_list_is_redacted() -> None:
    shown = redacted("nats://app:s3cret@n0:4222,nats://app:s3cret@n1:4222,nats://TOKEN@n2:4222")
    assert "s3cret" not in shown and "TOKEN" not in shown
    assert shown == "nats://app:***@n0:4222,nats://app:***@n1:4222,nats://***@n2:4222"
