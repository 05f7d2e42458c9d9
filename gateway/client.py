"""A small async client of the management API, used by the CLI (and usable by scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

__all__ = ["ApiClient", "ApiError"]

FINAL = {"succeeded", "failed", "expired", "cancelled"}


class ApiError(Exception):
    """The API answered with a problem, or could not be reached."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, json: Any = None, *, data: bytes | None = None,
        content_type: str = "application/octet-stream",
    ) -> Any:  # fmt: skip
        """The JSON answer of one request; ``data``: a raw body (an upload) instead of ``json``."""
        extra: dict[str, Any] = {"json": json} if data is None else {
            "data": data, "headers": {"Content-Type": content_type}}  # fmt: skip
        with self._reaching():
            async with self._session.request(method, self.base_url + path, **extra) as resp:
                body = await resp.json(content_type=None) if resp.content_length != 0 else None
                if resp.status >= 400:
                    raise ApiError(_problem_text(resp.status, body), resp.status, body)
                return body

    async def download(self, path: str) -> tuple[bytes, dict[str, str]]:
        """The raw body of a GET and its headers (a problem answer is an :class:`ApiError`)."""
        with self._reaching():
            async with self._session.get(self.base_url + path) as resp:
                if resp.status >= 400:
                    body = await resp.json(content_type=None) if resp.content_length != 0 else None
                    raise ApiError(_problem_text(resp.status, body), resp.status, body)
                return await resp.read(), dict(resp.headers)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """A gateway that cannot be reached, or does not answer in time, in one line."""
        try:
            yield
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(
                f"cannot reach the gateway at {self.base_url} ({exc.os_error}); "
                "is `agent-factory up` running?"
            ) from exc
        except TimeoutError as exc:
            raise ApiError(f"the gateway at {self.base_url} did not answer in time") from exc

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
