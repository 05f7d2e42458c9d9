"""Channels of the messaging mesh (``/api/v1/channels``)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from gateway.api.bodies import json_response
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.channels.registry import ChannelInfo, list_channels

__all__ = ["routes"]

routes = web.RouteTableDef()


class ChannelList(BaseModel):
    channels: list[ChannelInfo]


@routes.get("/api/v1/channels")
@endpoint("Messaging channels with their subscribers", response=ChannelList, tags=("channels",))
async def channels(request: web.Request) -> web.Response:
    """Every channel with live subscribers or a durable consumer group."""
    svc: Services = request.app[SERVICES]
    found = await list_channels(svc.js)
    return json_response({"channels": [c.model_dump(mode="json") for c in found]})
