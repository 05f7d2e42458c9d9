"""Long operations over the API (``/api/v1/operations``), and how a route starts one.

A route whose work takes long answers with :func:`accept`: ``202 Accepted``, the
operation as the body and its URL in ``Location``. With an ``Idempotency-Key``
header, the same key (per tenant) returns the operation it started the first
time — ``409`` if the request differs. Then:

* ``GET /api/v1/operations?status=&kind=&limit=``: newest first;
* ``GET /api/v1/operations/{id}``: status, progress, timestamps, result or
  error, and its history;
* ``DELETE /api/v1/operations/{id}``: ask it to stop (``202``; ``409`` once
  it ended);
* ``GET /api/v1/operations/{id}/events``: its history as Server-Sent Events,
  each as it happens (``Last-Event-ID`` resumes), ending when it does.

Row security keeps tenants apart: a tenant's token sees its tenant's operations
only, a fleet-wide one (``tenant`` null) is absent to it (404).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.store.operations import (
    FINAL,
    Operation,
    OperationEvent,
    OperationStatus,
    get_operation,
    list_events,
    list_operations,
    operation_by_key,
    same_request,
)
from agents.store.tenancy import tenant_scope
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response
from gateway.api.params import path_value, query_int
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint

__all__ = ["OperationEventView", "OperationList", "OperationView", "accept", "routes"]

routes = web.RouteTableDef()

OPERATION_ID: Final = re.compile(r"[0-9a-f]{32}")
_KIND: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_KEY: Final = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII
MAX_LIST: Final = 500
MAX_HISTORY: Final = 1000
KEEPALIVE_S: Final = 15.0  # an SSE comment this often, so proxies keep a quiet stream open
POLL_S: Final = 1.0  # how often a stream looks again for an operation another gateway runs


class OperationEventView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at: datetime
    status: OperationStatus
    progress: float
    message: str


class OperationView(BaseModel):
    """``202`` of a long route, and ``GET /api/v1/operations/{id}``."""

    id: str
    kind: str
    tenant: str | None
    target: str
    status: OperationStatus
    progress: float
    message: str
    request: dict[str, Any]
    result: Any = None
    error: str | None = None
    idempotency_key: str | None = None
    created_by: str
    owner: str | None = None
    attempts: int
    cancel_requested_at: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    url: str
    events_url: str
    history: list[OperationEventView] | None = None  # GET of one operation only

    @classmethod
    def of(cls, op: Operation, history: list[OperationEvent] | None = None) -> OperationView:
        url = f"/api/v1/operations/{op.id}"
        events = None if history is None else [OperationEventView.model_validate(e) for e in history]
        return cls(**asdict(op), url=url, events_url=f"{url}/events", history=events)


class OperationList(BaseModel):
    operations: list[OperationView]


def _view(op: Operation, history: list[OperationEvent] | None = None, status: int = 200) -> web.Response:
    return json_response(OperationView.of(op, history).model_dump(mode="json", exclude_none=False), status)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _KEY.fullmatch(key):
        raise web.HTTPBadRequest(text="Idempotency-Key must be 1 to 256 visible ASCII characters")
    return key


async def accept(
    request: web.Request, kind: str, target: str, body: BaseModel,
    *, check: Callable[[], Awaitable[None]] | None = None,
) -> web.Response:  # fmt: skip
    """Start operation ``kind`` on ``target`` for ``body`` and answer ``202``; or,
    for an ``Idempotency-Key`` seen before, the operation it started. ``check``
    runs first for a new one: what it raises is the answer."""
    svc: Services = request.app[SERVICES]
    who = principal(request)
    key = idempotency_key(request)
    asked = body.model_dump(mode="json")
    if key is not None:
        async with tenant_scope(svc.pool, who.tenant) as conn:
            seen = await operation_by_key(conn, who.tenant, key)
        if seen is not None:  # a retry: the same operation, whatever happened since
            return _accepted(same_request(seen, kind, target, asked))
    if check is not None:
        await check()
    op, _ = await svc.operations.submit(
        kind, target=target, request=asked, tenant=who.tenant, created_by=who.token_id, idempotency_key=key
    )
    return _accepted(op)


def _accepted(op: Operation) -> web.Response:
    response = _view(op, status=202)
    response.headers["Location"] = f"/api/v1/operations/{op.id}"
    return response


class OperationEventMessage(BaseModel):
    """One Server-Sent Event of ``/events``, as a client's SSE parser gives it."""

    id: str = Field(description="the event's seq: send it back as Last-Event-ID to resume")
    event: str = Field(description="the operation's status then")
    data: str = Field(
        description="an OperationEventView as JSON",
        json_schema_extra={"contentMediaType": "application/json"},
    )


class OperationQuery(BaseModel):
    """``GET /api/v1/operations`` (``status`` and ``kind`` may repeat)."""

    status: list[OperationStatus] = Field(default_factory=list, description="any of these")
    kind: list[str] = Field(default_factory=list, description="any of these, e.g. agent.deploy, dlq.replay")
    limit: int = Field(default=50, ge=0, le=MAX_LIST)


_ID_PATH: Final = {"id": OPERATION_ID}


@routes.get("/api/v1/operations")
@endpoint("Operations, newest first", query=OperationQuery, response=OperationList, tags=("operations",))
@tenant_scoped
async def list_all(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    statuses = request.query.getall("status", [])
    if unknown := set(statuses) - set(OperationStatus):
        raise web.HTTPBadRequest(text=f"status must be one of {', '.join(OperationStatus)}, not {unknown}")
    kinds = request.query.getall("kind", [])
    if any(not _KIND.fullmatch(k) for k in kinds):
        raise web.HTTPBadRequest(text="kind is a name such as agent.deploy or dlq.replay")
    limit = query_int(request, "limit", 50, MAX_LIST) or 1
    async with tenant_scope(svc.pool, principal(request).tenant) as conn:
        found = await list_operations(conn, statuses=statuses or None, kinds=kinds or None, limit=limit)
    body = OperationList(operations=[OperationView.of(op) for op in found])
    return json_response(body.model_dump(mode="json"))


@routes.get("/api/v1/operations/{id}")
@endpoint("One operation: status, progress, timestamps, result or error, and its history",
          response=OperationView, path=_ID_PATH, errors=(404,), tags=("operations",))  # fmt: skip
@tenant_scoped
async def show(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    op_id = path_value(request, "id", OPERATION_ID, "operation id")
    async with tenant_scope(svc.pool, principal(request).tenant) as conn:
        op = await get_operation(conn, op_id)
        history = await list_events(conn, op_id, limit=MAX_HISTORY)
    return _view(op, history)


@routes.delete("/api/v1/operations/{id}")
@endpoint("Ask an operation to stop", response=OperationView, status=202, path=_ID_PATH,
          errors=(404, 409), tags=("operations",))  # fmt: skip
@tenant_scoped
async def cancel(request: web.Request) -> web.Response:
    """202: asked (it stops at its next step, then reads ``cancelled``); 409 once it ended."""
    svc: Services = request.app[SERVICES]
    op_id = path_value(request, "id", OPERATION_ID, "operation id")
    op = await svc.operations.cancel(op_id, principal(request).tenant)
    return _view(op, status=202)


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", "")
    return int(raw) if re.fullmatch(r"[0-9]{1,9}", raw) else 0


@routes.get("/api/v1/operations/{id}/events")
@endpoint("An operation's history as Server-Sent Events, ending when it does", response=OperationEventMessage,
          path=_ID_PATH, errors=(404,), tags=("operations",), media_type="text/event-stream")  # fmt: skip
@tenant_scoped
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``id`` the event's seq, ``event`` its status, ``data``
    the event as JSON; the stream ends after the operation's final one."""
    svc: Services = request.app[SERVICES]
    tenant = principal(request).tenant
    op_id = path_value(request, "id", OPERATION_ID, "operation id")
    async with tenant_scope(svc.pool, tenant) as conn:
        await get_operation(conn, op_id)  # 404 before the stream starts
    after = _last_event_id(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})  # fmt: skip
    await response.prepare(request)
    try:
        await _send_until_final(response, svc, tenant, op_id, after)
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing more to do
        pass
    return response


async def _send_until_final(
    response: web.StreamResponse, svc: Services, tenant: str | None, op_id: str, after: int
) -> None:
    quiet_s = 0.0
    while True:
        async with tenant_scope(svc.pool, tenant) as conn:
            # The operation before its events: its final event commits with its final
            # status, so once the status says finished, the events read next hold all.
            op = await get_operation(conn, op_id)
            events = await list_events(conn, op_id, after=after)
        for event in events:
            data = OperationEventView.model_validate(event).model_dump_json()
            await response.write(f"id: {event.seq}\nevent: {event.status.value}\ndata: {data}\n\n".encode())
            after = event.seq
        if op.status in FINAL:
            return
        if events:
            quiet_s = 0.0
        elif quiet_s >= KEEPALIVE_S:
            await response.write(b": keep-alive\n\n")
            quiet_s = 0.0
        started = time.monotonic()
        await svc.operations.changed(POLL_S)
        quiet_s += time.monotonic() - started
