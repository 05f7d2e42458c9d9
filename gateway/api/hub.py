"""The Agent Hub's routes: publish, search, versions, one version, its archive.

A tenant's token sees public packages and its tenant's own (row security in
PostgreSQL, :mod:`agents.store.hub_index`); another tenant's private package
is 404, as if it did not exist. A download is checked against the digest the
index holds before a byte is sent (:mod:`agents.hub`).

A publish takes the archive as the request body (at most
``hub_max_package_bytes``), stages it in the object store under its digest and
answers ``202`` with an operation ``hub.publish``: the checks of
:mod:`agents.hub.checks` (archive, signature policy, version and breaking
changes, the pack's own tests) run there, then the package is indexed. The
staged archive is removed once the operation ends; a gateway that dies midway
leaves it to the operation's resumption.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.hub import Hub, HubPackage, PackageExists
from agents.hub.checks import check_package
from agents.packaging import TrustPolicies
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response
from gateway.api.operations import OperationView, accept
from gateway.api.params import path_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from gateway.operations import OperationContext, OperationKind
from mesh import names
from mesh.blobs import delete_blob, get_blob, put_blob

__all__ = ["PACKAGE", "VERSION", "hub_kinds", "load_trust_policies", "routes"]

routes = web.RouteTableDef()

PACKAGE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as hub_packages.name
VERSION: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,63}")
TAG: Final = r"[a-z0-9][a-z0-9._-]{0,63}"
_PATH: Final = {"package": PACKAGE, "version": VERSION}


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(default="", max_length=200, pattern=r"^[^\x00]*$", description="words, or a name prefix")
    tags: str = Field(
        default="", pattern=f"^(?:{TAG}(?:,{TAG})*)?$", description="comma-separated: all of them"
    )
    limit: int = Field(default=20, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=100_000)


class PackageList(BaseModel):
    packages: list[HubPackage]


class PublishQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public: bool = Field(default=False, description="every tenant sees it (a token of every tenant only)")


class PublishRequest(BaseModel):
    """What a ``hub.publish`` operation was asked: the staged archive."""

    staged: str = Field(description="the archive's object in af_packages while it is checked")
    digest: str = Field(pattern="^[0-9a-f]{64}$", description="its SHA-256")
    size_bytes: int
    public: bool


def load_trust_policies(path: Path | None) -> TrustPolicies:
    """The installation's package trust policies (``trust_policy_file``); a file that is
    not one is an error at start, naming the file."""
    if path is None:
        return TrustPolicies()
    try:
        return TrustPolicies.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ValueError(f"AF_TRUST_POLICY_FILE {path}: not a trust policy: {exc}") from exc


def _hub(request: web.Request) -> Hub:
    svc: Services = request.app[SERVICES]
    return Hub(svc.pool, svc.nc, svc.js)


def _name_version(request: web.Request) -> tuple[str, str]:
    name = path_value(request, "package", PACKAGE, "package name")
    return name, path_value(request, "version", VERSION, "version")


@routes.post("/api/v1/hub/packages")
@endpoint("Publish a package: the .glpack as the body; checked in an operation", query=PublishQuery,
          body=bytes, body_media_type="application/gzip", response=OperationView, status=202,
          errors=(403, 409, 413, 415, 422), tags=("hub",))  # fmt: skip
@tenant_scoped
async def publish(request: web.Request) -> web.Response:
    """The body is the archive (``application/gzip`` or ``application/octet-stream``). The
    operation's result is the package as indexed; its error, why it was refused."""
    svc: Services = request.app[SERVICES]
    q = PublishQuery.model_validate(dict(request.query))
    if q.public and principal(request).tenant is not None:
        raise web.HTTPForbidden(text="a public package is published with a token of every tenant")
    if request.content_type not in ("application/gzip", "application/octet-stream", "application/x-gzip"):
        raise web.HTTPUnsupportedMediaType(
            text=f"the body is a .glpack: Content-Type application/gzip, not {request.content_type}"
        )
    cap = svc.settings.hub_max_package_bytes
    if request.content_length is not None and request.content_length > cap:
        raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=request.content_length)
    chunks, size, digest = [], 0, hashlib.sha256()
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > cap:
            raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=size)
        digest.update(chunk)
        chunks.append(chunk)
    if not size:
        raise web.HTTPUnprocessableEntity(text="the body is empty: send the .glpack as the request body")
    hexed = digest.hexdigest()
    staged = f"staging/{hexed}.glpack"
    # Named by its digest: the same bytes staged already (a retry, a second publish of them)
    # are left as they are, never rewritten under an operation reading them.
    await put_blob(svc.js, names.OBJECTS_PACKAGES, staged, b"".join(chunks), replace=False)
    body = PublishRequest(staged=staged, digest=hexed, size_bytes=size, public=q.public)
    return await accept(request, "hub.publish", f"sha256:{hexed[:16]}", body)


@routes.get("/api/v1/hub/packages")
@endpoint("Search the hub: each package's newest version, best match first", query=SearchQuery,
          response=PackageList, errors=(422,), tags=("hub",))  # fmt: skip
@tenant_scoped
async def search(request: web.Request) -> web.Response:
    q = SearchQuery.model_validate(dict(request.query))
    tags = [t for t in q.tags.split(",") if t]
    found = await _hub(request).search(q.q, tags, tenant=principal(request).tenant, limit=q.limit,
                                       offset=q.offset)  # fmt: skip
    return json_response({"packages": [p.model_dump(mode="json") for p in found]})


@routes.get("/api/v1/hub/packages/{package}")
@endpoint("Every version of a package, newest first", response=PackageList, path=_PATH, errors=(404,),
          tags=("hub",))  # fmt: skip
@tenant_scoped
async def versions(request: web.Request) -> web.Response:
    name = path_value(request, "package", PACKAGE, "package name")
    found = await _hub(request).versions(name, tenant=principal(request).tenant)
    if not found:
        raise web.HTTPNotFound(text=f"no package {name} in the hub")
    return json_response({"packages": [p.model_dump(mode="json") for p in found]})


@routes.get("/api/v1/hub/packages/{package}/{version}")
@endpoint("One version of a package: what the index holds", response=HubPackage, path=_PATH, errors=(404,),
          tags=("hub",))  # fmt: skip
@tenant_scoped
async def package(request: web.Request) -> web.Response:
    name, version = _name_version(request)
    found = await _hub(request).get(name, version, tenant=principal(request).tenant)
    return json_response(found.model_dump(mode="json"))


@routes.get("/api/v1/hub/packages/{package}/{version}/archive")
@endpoint("Download a version's .glpack, checked against its digest first", response=bytes, path=_PATH,
          errors=(404, 502), tags=("hub",), media_type="application/gzip")  # fmt: skip
@tenant_scoped
async def archive(request: web.Request) -> web.Response:
    """The archive's SHA-256 is in ``Digest`` (RFC 3230, base64) and ``X-Package-Sha256`` (hex):
    a client checks what it received against them."""
    name, version = _name_version(request)
    found, data = await _hub(request).download(name, version, tenant=principal(request).tenant)
    digest = base64.b64encode(bytes.fromhex(found.digest)).decode()
    headers = {
        "Digest": f"sha-256={digest}",
        "X-Package-Sha256": found.digest,
        "Content-Disposition": f'attachment; filename="{name}-{version}.glpack"',
    }
    return web.Response(body=data, content_type="application/gzip", headers=headers)


def hub_kinds(svc: Services) -> list[OperationKind]:
    """``hub.publish``: check a staged archive, then index it (resumable: each step is)."""
    policies = load_trust_policies(svc.settings.trust_policy_file)
    hub = Hub(svc.pool, svc.nc, svc.js)

    async def publish(ctx: OperationContext) -> dict[str, Any]:
        asked = PublishRequest.model_validate(ctx.op.request)
        tenant = None if asked.public else ctx.op.tenant
        try:
            await ctx.progress(5, "reading the staged archive")
            archive = await get_blob(svc.nc, svc.js, names.OBJECTS_PACKAGES, asked.staged, asked.digest)
            await ctx.progress(10, "checking the archive, its signature and its version; running its tests")
            policy = policies.for_tenant(ctx.op.tenant) if ctx.op.tenant else policies.default

            async def earlier(name: str) -> list[HubPackage]:
                """The line it continues: a public version the public versions; a tenant's
                its own, once it has any (a fork is its own line), else the public ones."""
                seen = await hub.versions(name, tenant=ctx.op.tenant)
                own = [p for p in seen if tenant is not None and p.tenant == tenant]
                return own or [p for p in seen if p.tenant is None]

            checked = await check_package(archive, policy=policy, earlier=earlier,
                                          test_timeout_s=svc.settings.hub_test_timeout_s)  # fmt: skip
            what = checked.published
            await ctx.progress(
                90, f"{what.name} {what.version}: checks passed ({checked.tests.summary}); indexing"
            )
            try:
                package = await hub.publish(archive, what, tenant=tenant, publisher=ctx.op.created_by)
            except PackageExists:  # resumed after it was indexed: the same bytes are a success
                package = await hub.get(what.name, what.version, tenant=tenant)
                if package.digest != asked.digest or package.tenant != tenant:
                    raise
        except Exception:  # the operation ends failed (a refusal, or NATS or the database away)
            with contextlib.suppress(Exception):  # else it stays until a later publish of it
                await delete_blob(svc.js, names.OBJECTS_PACKAGES, asked.staged)
            raise
        await delete_blob(svc.js, names.OBJECTS_PACKAGES, asked.staged)
        return package.model_dump(mode="json")

    return [OperationKind("hub.publish", publish, resumable=True)]
