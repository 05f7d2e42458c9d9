"""The sandbox's pure parts: error categories, output capture, frames, limits, levels."""

from __future__ import annotations

import errno
import socket

import pytest
from pydantic import BaseModel, ValidationError

from agents.sandbox import ErrorCategory, Levels, SandboxLimits
from agents.sandbox.child import classify
from agents.sandbox.frames import FrameReader, encode
from agents.sandbox.template import Capture
from mesh.queue.worker import PermanentError


class _Model(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Model.model_validate({"n": "x"})
    return info.value


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (_validation_error(), ErrorCategory.INPUT_ERROR),
        (PermanentError("no such account"), ErrorCategory.INPUT_ERROR),
        (MemoryError(), ErrorCategory.RESOURCE_EXCEEDED),
        (OSError(errno.EFBIG, "File too large"), ErrorCategory.RESOURCE_EXCEEDED),
        (OSError(errno.EMFILE, "Too many open files"), ErrorCategory.RESOURCE_EXCEEDED),
        (BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"), ErrorCategory.RESOURCE_EXCEEDED),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ErrorCategory.DEPENDENCY_FAILURE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), ErrorCategory.DEPENDENCY_FAILURE),
        (socket.gaierror(-2, "Name or service not known"), ErrorCategory.DEPENDENCY_FAILURE),
        (ZeroDivisionError(), ErrorCategory.INTERNAL_ERROR),
        (KeyError("x"), ErrorCategory.INTERNAL_ERROR),
    ],
)
def test_what_an_agent_raises_maps_to_one_category(exc: BaseException, category: ErrorCategory) -> None:
    assert classify(exc) is category


def test_the_cause_of_a_wrapped_error_decides_its_category() -> None:
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        except ConnectionResetError as inner:
            raise RuntimeError("the emission factor service failed") from inner
    except RuntimeError as outer:
        assert classify(outer) is ErrorCategory.DEPENDENCY_FAILURE


def test_only_input_errors_are_permanent() -> None:
    assert [c for c in ErrorCategory if c.permanent] == [ErrorCategory.INPUT_ERROR]
    assert {c.value for c in ErrorCategory} == {
        "input_error", "timeout", "resource_exceeded", "dependency_failure", "internal_error",
    }  # fmt: skip


def test_a_capture_keeps_up_to_its_cap_then_marks_what_it_dropped() -> None:
    capture = Capture(cap=10)
    for chunk in (b"hello ", b"world", b"!" * 100):
        capture.feed(chunk)
    assert capture.total == 111
    assert capture.value() == b"hello worl\n[truncated: 101 more bytes]\n"
    small = Capture(cap=10)
    small.feed(b"exactly 10")
    assert small.value() == b"exactly 10"


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    wire = encode({"a": 1}) + encode({"b": "x" * 1000}) + encode({})
    reader = FrameReader()
    out = []
    for i in range(0, len(wire), 7):
        out.extend(reader.feed(wire[i : i + 7]))
    assert out == [{"a": 1}, {"b": "x" * 1000}, {}]


def test_a_frame_over_the_size_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="over the"):
        FrameReader().feed((2**31).to_bytes(4, "big"))


def test_limits_refuse_values_that_would_disable_them() -> None:
    with pytest.raises(ValidationError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValidationError):
        SandboxLimits(processes=0)
    assert SandboxLimits().output_cap_bytes == 10 * 1024 * 1024
    assert SandboxLimits().grace_s == 5.0


def test_levels_round_trip_through_their_dict_and_say_why_a_level_is_off() -> None:
    levels = Levels(cgroup="v1", cgroup_controllers=("memory", "pids"), network_namespace=True, uid_drop=True)
    assert Levels.from_dict(levels.as_dict()) == levels
    off = levels.without("network_namespace", "refused").without("cgroup", "none here")
    assert off.network_namespace is False and off.cgroup is None and off.cgroup_controllers == ()
    assert off.as_dict()["off_because"] == {"network_namespace": "refused", "cgroup": "none here"}
