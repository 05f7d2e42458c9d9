"""``mesh.provision.placed``: a create the cluster cannot place yet (10005, or a 503
while the meta leader is elected) is asked again, within its patience; any
other refusal is the caller's at once. (Seen for real in CI on a fresh and
on a starved 3-node cluster: tests/cluster.)"""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from mesh.provision import placed


def _refusing(*errors: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    async def create() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "created"

    return calls, create


async def test_no_peers_for_placement_and_503_are_asked_again() -> None:
    calls, create = _refusing(
        BadRequestError(code=400, err_code=10005, description="no suitable peers for placement"),
        ServiceUnavailableError(code=503),
    )
    assert await placed(create, "stream X") == "created"  # type: ignore[arg-type]
    assert len(calls) == 3


async def test_other_refusals_are_raised_at_once() -> None:
    calls, create = _refusing(BadRequestError(code=400, err_code=10058, description="name in use"))
    with pytest.raises(BadRequestError) as refused:
        await placed(create, "stream X")  # type: ignore[arg-type]
    assert refused.value.err_code == 10058 and len(calls) == 1


async def test_patience_runs_out_with_the_last_refusal() -> None:
    offline = BadRequestError(code=400, err_code=10005, description="peer offline")
    calls, create = _refusing(*[offline] * 100)
    with pytest.raises(BadRequestError):
        await placed(create, "stream X", patience_s=0.5)  # type: ignore[arg-type]
    assert 2 <= len(calls) < 10  # 0.1 s, 0.2 s, … pauses: a few tries, not a spin


async def test_no_answer_is_asked_again_and_not_found_is_the_callers_at_once() -> None:
    calls, create = _refusing(NatsTimeoutError(), NatsTimeoutError())
    assert await placed(create, "stream X") == "created"  # type: ignore[arg-type]
    assert len(calls) == 3
    calls, create = _refusing(NotFoundError(code=404, err_code=10059))
    with pytest.raises(NotFoundError):
        await placed(create, "stream X")  # type: ignore[arg-type]
    assert len(calls) == 1
