"""mesh.wire.protocol leans on a few nats-py internals; this fails first if an upgrade moves them."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from nats.aio.client import Client
from nats.protocol import parser


def test_nats_py_is_the_pinned_version() -> None:
    assert version("nats-py") == "2.16.0", (
        "re-check mesh/wire/protocol.py against the new nats-py, then re-pin"
    )


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


def test_the_other_internals_mesh_wire_touches_are_there() -> None:
    """Every other nats-py private attribute the project uses, all in mesh/wire/."""
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

    nc = Client()
    assert isinstance(nc._subs, dict), "_subs: close_publish_async_inbox walks it"
    js = JetStreamContext(nc)
    assert js._prefix == "$JS.API", "_prefix: api_prefix reads it"
    assert hasattr(js, "_async_reply_prefix"), "close_publish_async_inbox reads it"
    sub = Subscription(nc, 7, "x")
    assert sub._id == 7, "_id: DirectInbox keys its handler table by it"
    msg = Msg(nc, subject="x")
    assert msg._ackd is False, "_ackd: the publisher marks a double-acked message"


def test_no_module_outside_mesh_wire_touches_nats_py_internals() -> None:
    """The rule the pins above rely on: a nats-py upgrade is checked in one folder."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[3]
    private = re.compile(r"\b(?:nc|js|sub|msg|client|_nc|_js|_sub)\._[a-z]\w*")
    offenders = []
    for package in ("mesh", "agents", "gateway", "streams", "benchmarks"):
        for path in (root / package).rglob("*.py"):
            if "wire" in path.relative_to(root).parts[:2]:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if private.search(line):
                    offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
