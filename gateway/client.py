"""A small async client of the management API, used by the CLI (and usable by scripts).

An idempotent request (a GET or HEAD, or any request that carries an
``Idempotency-Key``) is retried when the gateway cannot be reached or answers
502, 503 or 504: at most :attr:`Retries.attempts` times, waiting by
:func:`mesh.backoff.backoff_s` (exponential, with jitter) or as long as the
answer's ``Retry-After`` says, never more than :attr:`Retries.budget_s` in all.
Anything else is sent once: a POST without a key may have taken effect.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp

from mesh.backoff import backoff_s

__all__ = ["ApiClient", "ApiError", "Retries"]

FINAL = {"succeeded", "failed", "expired", "cancelled"}
TRANSIENT: Final = frozenset({502, 503, 504})
_SAFE: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Retries:
    """How an idempotent request is retried (see the module docstring)."""

    attempts: int = 4
    base_s: float = 0.25
    max_s: float = 2.0
    budget_s: float = 5.0  # the waits between attempts, in all

    def pause_s(self, attempt: int, retry_after: str | None) -> float:
        """The wait after ``attempt`` failed: as ``Retry-After`` says, else the backoff's."""
        told = _retry_after_s(retry_after)
        return told if told is not None else backoff_s(attempt, self.base_s, self.max_s)


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            if self.status < 400:
                raise
            return self.body.decode(errors="replace")[:500]  # a proxy's HTML error page


class ApiError(Exception):
    """The API answered with a problem, or could not be reached."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ApiClient:
    def __init__(
        self, base_url: str, token: str | None, timeout: float = 30.0, retries: Retries = Retries()
    ) -> None:
        self.base_url, self.retries = base_url.rstrip("/"), retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, json: Any = None, *, data: bytes | None = None,
        content_type: str = "application/octet-stream", headers: Mapping[str, str] | None = None,
    ) -> Any:  # fmt: skip
        """The JSON answer of one request; ``data``: a raw body (an upload) instead of
        ``json``; ``headers``: e.g. an ``Idempotency-Key``, which makes it retryable."""
        sent = dict(headers or {})
        extra: dict[str, Any] = {"json": json} if data is None else {"data": data}
        if data is not None:
            sent["Content-Type"] = content_type
        answer = await self._exchange(method, path, headers=sent, **extra)
        body = answer.json()
        if answer.status >= 400:
            raise ApiError(_problem_text(answer.status, body), answer.status, body)
        return body

    async def download(self, path: str) -> tuple[bytes, dict[str, str]]:
        """The raw body of a GET and its headers (a problem answer is an :class:`ApiError`)."""
        answer = await self._exchange("GET", path, headers={})
        if answer.status >= 400:
            body = answer.json()
            raise ApiError(_problem_text(answer.status, body), answer.status, body)
        return answer.body, answer.headers

    async def _exchange(self, method: str, path: str, *, headers: dict[str, str], **kwargs: Any) -> _Answer:
        """One request, retried while it is idempotent, failed transiently, and within
        the attempts and the budget; the last answer (or unreachable gateway) stands."""
        retryable = method in _SAFE or any(k.lower() == "idempotency-key" for k in headers)
        waited = 0.0
        for attempt in range(1, self.retries.attempts + 1):
            outcome = await self._once(method, path, headers=headers, **kwargs)
            transient = isinstance(outcome, BaseException) or outcome.status in TRANSIENT
            if not (retryable and transient) or attempt == self.retries.attempts:
                break
            told = None if isinstance(outcome, BaseException) else outcome.headers.get("Retry-After")
            pause = self.retries.pause_s(attempt, told)
            if waited + pause > self.retries.budget_s:
                break  # told to come back later than we wait: the answer stands
            waited += pause
            await asyncio.sleep(pause)
        if isinstance(outcome, BaseException):
            raise self._unreachable(outcome)
        return outcome

    async def _once(self, method: str, path: str, **kwargs: Any) -> _Answer | aiohttp.ClientConnectionError:
        try:
            async with self._session.request(method, self.base_url + path, **kwargs) as resp:
                return _Answer(resp.status, await resp.read(), dict(resp.headers))
        except TimeoutError as exc:  # before ClientConnectionError: ServerTimeoutError is both
            raise ApiError(f"the gateway at {self.base_url} did not answer in time") from exc
        except aiohttp.ClientConnectionError as exc:
            return exc

    def _unreachable(self, exc: aiohttp.ClientConnectionError) -> ApiError:
        """A gateway that cannot be reached, or dropped the connection, in one line."""
        if isinstance(exc, aiohttp.ClientConnectorError):
            error = ApiError(
                f"cannot reach the gateway at {self.base_url} ({exc.os_error}); "
                "is `agent-factory up` running?"
            )
        else:
            error = ApiError(
                f"the gateway at {self.base_url} closed the connection ({exc or type(exc).__name__})"
            )
        error.__cause__ = exc
        return error

    async def submit(self, agent: str, body: dict[str, Any], wait: bool = False) -> dict[str, Any]:
        """``wait``: the caller will wait for the result, so an open breaker is refused (503)."""
        query = "?wait=true" if wait else ""
        result: dict[str, Any] = await self.request("POST", f"/api/v1/agents/{agent}/runs{query}", body)
        return result

    async def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/v1/runs/{run_id}")
        return result

    async def wait(
        self,
        run_id: str,
        timeout: float,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run is final (backing off from 20 ms to 500 ms)."""
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            view = await self.run(run_id)
            if on_update is not None:
                on_update(view)
            if view["status"] in FINAL:
                return view
            if time.monotonic() > deadline:
                raise ApiError(f"run {run_id} is still {view['status']} after {timeout:g}s")
            await asyncio.sleep(pause)
            pause = min(0.5, pause * 1.5)


def _problem_text(status: int, body: Any) -> str:
    if isinstance(body, dict) and "title" in body:
        text = f"{body['title']} ({status})"
        if body.get("detail"):
            text += f": {body['detail']}"
        for err in body.get("errors") or []:
            where = ".".join(str(p) for p in err.get("loc", []))
            text += f"\n  - {where}: {err.get('msg')}"
        return text
    return f"HTTP {status}: {body}"
