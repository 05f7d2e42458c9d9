"""Schedules (cron) and event triggers: ``/api/v1/queue/schedules``.

Both kinds live under one resource, told apart by ``kind`` (``cron`` or
``trigger``; inferred from ``on`` when absent). Names are unique across both.

* ``GET    /api/v1/queue/schedules[?kind=cron|trigger]`` -> ``{"schedules": [...]}``
* ``POST   /api/v1/queue/schedules`` -> 201, 409 if the name exists
* ``GET    /api/v1/queue/schedules/{name}``
* ``PUT    /api/v1/queue/schedules/{name}`` -> create or replace
* ``DELETE /api/v1/queue/schedules/{name}`` -> 204
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from agents.errors import AgentInputInvalid
from gateway.api.bodies import json_response, read_json
from gateway.api.problems import validation_errors
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.envelope import Priority
from mesh.schedules.definitions import (
    CronSchedule,
    EventTrigger,
    add_definition,
    describe,
    get_definition,
    list_definitions,
    parse_definition,
    remove_definition,
)

__all__ = ["BASE", "routes"]

BASE = "/api/v1/queue/schedules"

routes = web.RouteTableDef()

PriorityName = Annotated[str, Field(json_schema_extra={"enum": [p.name for p in Priority]})]


class CronView(CronSchedule):
    """A cron schedule as the API shows it (:func:`~mesh.schedules.definitions.describe`)."""

    priority: PriorityName  # type: ignore[assignment]
    fires_next: datetime | None = Field(  # not ``next_fire``: that is the method computing it
        alias="next_fire", description="null for @every: it counts from registration"
    )


class TriggerView(EventTrigger):
    priority: PriorityName  # type: ignore[assignment]


ScheduleView = CronView | TriggerView
Definition = CronSchedule | EventTrigger  # a body: kind, else inferred from "on"


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


class KindQuery(BaseModel):
    kind: Literal["cron", "trigger"] | None = None


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _check_agent(svc: Services, definition: CronSchedule | EventTrigger) -> None:
    """404 for an unknown agent; a fixed input (cron, or a trigger that does not
    pass the event) must also match the agent's input model."""
    agent = svc.registry.get(definition.agent)
    if isinstance(definition, EventTrigger) and definition.event_field is not None:
        return
    try:
        agent.Input.model_validate(definition.input)
    except ValidationError as exc:
        raise AgentInputInvalid(
            f"input does not match the schema of {agent.key}", validation_errors(exc)
        ) from exc


def _created(definition: CronSchedule | EventTrigger, status: int) -> web.Response:
    response = json_response(describe(definition), status=status)
    response.headers["Location"] = f"{BASE}/{definition.name}"
    return response


@routes.get(BASE)
@endpoint("Cron schedules and event triggers", query=KindQuery, response=ScheduleList, tags=("schedules",))
async def list_schedules(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    kind = request.query.get("kind")
    if kind not in (None, "cron", "trigger"):
        raise web.HTTPBadRequest(text="kind must be cron or trigger")
    found = await list_definitions(svc.js)
    return json_response({"schedules": [describe(d) for d in found if kind in (None, d.kind)]})


@routes.post(BASE)
@endpoint("Create a schedule or trigger", body=Definition, response=ScheduleView, status=201,
          errors=(404, 409), tags=("schedules",))  # fmt: skip
async def create_schedule(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    definition = parse_definition(await _body(request))
    _check_agent(svc, definition)
    await add_definition(svc.js, definition)
    return _created(definition, 201)


@routes.put(BASE + "/{name}")
@endpoint("Create (201) or replace (200) a schedule or trigger; the body's name may be left out",
          body=Definition, response=ScheduleView, status=(200, 201), errors=(404,),
          tags=("schedules",))  # fmt: skip
async def replace_schedule(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    body = await _body(request)
    name = request.match_info["name"]
    if body.setdefault("name", name) != name:
        raise web.HTTPBadRequest(text=f"the body names {body['name']!r}, the path {name!r}")
    definition = parse_definition(body)
    _check_agent(svc, definition)
    existed = await get_definition(svc.js, name, missing_ok=True) is not None
    await add_definition(svc.js, definition, replace=True)
    return _created(definition, 200 if existed else 201)


@routes.get(BASE + "/{name}")
@endpoint("One schedule or trigger", response=ScheduleView, errors=(404,), tags=("schedules",))
async def get_schedule(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    definition = await get_definition(svc.js, request.match_info["name"])
    assert definition is not None
    return json_response(describe(definition))


@routes.delete(BASE + "/{name}")
@endpoint("Delete a schedule or trigger", status=204, errors=(404,), tags=("schedules",))
async def delete_schedule(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    await remove_definition(svc.js, request.match_info["name"])
    return web.Response(status=204)
