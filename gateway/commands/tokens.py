"""``agent-factory token …`` and ``agent-factory tenant …``: who may use the API, and
the tenants whose data it keeps apart."""

from __future__ import annotations

from typing import Any

import click

from gateway.commands.common import Ctx, _call, _emit, _run, output_option

__all__ = ["tenant", "token"]

_SCOPES = click.Choice(["reader", "operator", "admin"])


@click.group()
def token() -> None:
    """API tokens: a scope and a tenant each (needs an admin token).

    \b
    agent-factory token create --scope operator --tenant acme --name "acme CI"
    agent-factory token ls
    agent-factory token revoke 3f9c2a1b0d4e

    A reader reads; an operator also submits and cancels runs (and, with a
    token of every tenant, drains, deploys, replays); an admin also manages
    tokens and tenants. A token bound to a tenant sees and touches that
    tenant's runs, costs and limits only; the database enforces it (row
    security). The secret is printed once: only its hash is stored.
    """


@token.command("create")
@click.option("--scope", type=_SCOPES, required=True, help="reader, operator or admin.")
@click.option("--tenant", help="The tenant it is bound to [default: every tenant; admin only].")
@click.option("--name", default="", help="What it is for (shown by `token ls`).")
@output_option
@click.pass_obj
def create(obj: Ctx, scope: str, tenant: str | None, name: str, output: str) -> None:
    """Make a token; prints its secret once."""
    body: dict[str, Any] = {"scope": scope, "name": name}
    if tenant is not None:
        body["tenant"] = tenant
    data = _run(_call(obj, "POST", "/api/v1/tokens", body))
    if output == "json":
        _emit(output, data)
        return
    t = data["token"]
    _emit(output, data, [("id", t["id"]), ("scope", t["scope"]), ("tenant", t["tenant"] or "(every tenant)"),
                         ("name", t["name"]), ("secret", data["secret"])])  # fmt: skip
    click.echo("Keep the secret now: it cannot be shown again.", err=True)


@token.command("ls")
@click.option("--revoked", is_flag=True, help="Revoked tokens too.")
@output_option
@click.pass_obj
def ls(obj: Ctx, revoked: bool, output: str) -> None:
    """The tokens this admin may see (a tenant's admin: its tenant's)."""
    data = _run(_call(obj, "GET", "/api/v1/tokens" + ("?revoked=true" if revoked else "")))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'ID':<14}{'SCOPE':<10}{'TENANT':<18}{'CREATED':<27}{'REVOKED':<27}NAME")
    for t in data["tokens"]:
        click.echo(f"{t['id']:<14}{t['scope']:<10}{t['tenant'] or '*':<18}{t['created_at'][:25]:<27}"
                   f"{(t['revoked_at'] or '')[:25]:<27}{t['name']}")  # fmt: skip


@token.command("revoke")
@click.argument("token_id")
@output_option
@click.pass_obj
def revoke(obj: Ctx, token_id: str, output: str) -> None:
    """Revoke TOKEN_ID: refused at once here, within 5 s by every gateway."""
    data = _run(_call(obj, "DELETE", f"/api/v1/tokens/{token_id}"))
    t = data["token"]
    _emit(output, data, [("id", t["id"]), ("revoked_at", t["revoked_at"])])


@click.group()
def tenant() -> None:
    """Tenants: whose runs, costs and limits are kept apart.

    \b
    agent-factory tenant create acme --name "Acme Corp"
    agent-factory tenant ls
    agent-factory tenant disable acme     # its tokens stop working
    agent-factory tenant enable acme
    """


def _show(output: str, data: dict[str, Any]) -> None:
    t = data["tenant"]
    _emit(output, data, [(k, t[k]) for k in ("id", "name", "enabled", "created_at", "updated_at")])


@tenant.command("create")
@click.argument("tenant_id")
@click.option("--name", default="", help="A display name.")
@output_option
@click.pass_obj
def create_tenant(obj: Ctx, tenant_id: str, name: str, output: str) -> None:
    """Create TENANT_ID (again: changes nothing)."""
    _show(output, _run(_call(obj, "POST", "/api/v1/tenants", {"id": tenant_id, "name": name})))


@tenant.command("ls")
@output_option
@click.pass_obj
def ls_tenants(obj: Ctx, output: str) -> None:
    """Every tenant (a tenant's token: its own)."""
    data = _run(_call(obj, "GET", "/api/v1/tenants"))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'ID':<24}{'ENABLED':<9}{'CREATED':<27}NAME")
    for t in data["tenants"]:
        click.echo(f"{t['id']:<24}{'yes' if t['enabled'] else 'no':<9}{t['created_at'][:25]:<27}{t['name']}")


@tenant.command("set")
@click.argument("tenant_id")
@click.option("--name", help="A new display name.")
@output_option
@click.pass_obj
def set_(obj: Ctx, tenant_id: str, name: str | None, output: str) -> None:
    """Change TENANT_ID's name."""
    body = {} if name is None else {"name": name}
    _show(output, _run(_call(obj, "PATCH", f"/api/v1/tenants/{tenant_id}", body)))


@tenant.command("disable")
@click.argument("tenant_id")
@output_option
@click.pass_obj
def disable(obj: Ctx, tenant_id: str, output: str) -> None:
    """Disable TENANT_ID: its tokens stop working (at once here, within 5 s elsewhere)."""
    _show(output, _run(_call(obj, "PATCH", f"/api/v1/tenants/{tenant_id}", {"enabled": False})))


@tenant.command("enable")
@click.argument("tenant_id")
@output_option
@click.pass_obj
def enable(obj: Ctx, tenant_id: str, output: str) -> None:
    """Enable TENANT_ID again."""
    _show(output, _run(_call(obj, "PATCH", f"/api/v1/tenants/{tenant_id}", {"enabled": True})))
