"""mesh.lean leans on a few nats-py internals; this fails first if an upgrade moves them."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from nats.aio.client import Client
from nats.protocol import parser


def test_nats_py_is_the_pinned_version() -> None:
    assert version("nats-py") == "2.16.0", "re-check mesh/lean.py against the new nats-py, then re-pin"


def test_the_client_internals_mesh_lean_uses_are_there() -> None:
    nc = Client()
    for name in (
        "_ps",
        "_pending",
        "_pending_data_size",
        "_max_pending_size",
        "_flush_queue",
        "_max_payload",
    ):
        assert hasattr(nc, name), name
    assert inspect.iscoroutinefunction(nc._process_msg)
    assert list(inspect.signature(nc._process_msg).parameters) == [
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]
    assert inspect.iscoroutinefunction(nc._flush_pending)
    assert "force_flush" in inspect.signature(nc._flush_pending).parameters
    assert isinstance(nc._ps, parser.Parser)


def test_the_parser_state_mesh_lean_shares_is_there() -> None:
    p = parser.Parser()
    assert (p.state, p.needed, p.header_needed, p.msg_arg) == (parser.AWAITING_CONTROL_LINE, 0, 0, {})
    assert isinstance(p.buf, bytearray) and parser.AWAITING_MSG_PAYLOAD != parser.AWAITING_CONTROL_LINE
