-- Tenants, scoped API tokens, and tenant isolation in the database (issue 24).
--
-- The application connects as `af_app`, a role that owns nothing: every
-- tenant-scoped table has ENABLE and FORCE ROW LEVEL SECURITY with one policy,
-- `af_visible(tenant)`, which reads the transaction's `af.tenant` setting
-- (`SELECT set_config('af.tenant', $1, true)`, see agents/store/tenancy.py):
--   * a tenant id sees and writes that tenant's rows only;
--   * '*' sees every tenant (admin tokens and the platform's own recorders);
--   * unset (a connection that forgot) sees nothing: isolation fails closed.
-- `true` makes the setting transaction-local, so a pooled connection never
-- carries one request's tenant into the next.
--
-- Creating the role needs CREATEROLE (the embedded server's `postgres` has
-- it). Elsewhere create it beforehand: CREATE ROLE af_app LOGIN PASSWORD '…';
-- the migration then only grants. Roles are per server, not per database.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'af_app') THEN
        CREATE ROLE af_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO af_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO af_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO af_app;
REVOKE ALL ON schema_migrations FROM af_app;
GRANT SELECT ON schema_migrations TO af_app;
-- Tables later migrations create are the application's to use as well.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO af_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO af_app;

CREATE FUNCTION af_visible(row_tenant text) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('af.tenant', true) IN ('*', row_tenant), false) $$;

-- Tenants: a tenant token sees its own row.
CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,128}$'),
    name        text NOT NULL DEFAULT '',
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (id, name) VALUES ('default', 'Default tenant');

-- API tokens, stored as the SHA-256 of the token (tokens are 256-bit random
-- secrets, so a fast hash is enough; the secret itself is shown once). `tenant`
-- NULL: every tenant (an admin token only). Revoked tokens stay, for the audit.
CREATE TABLE api_tokens (
    id           text PRIMARY KEY CHECK (id ~ '^[a-z0-9_-]{1,64}$'),
    name         text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    scope        text NOT NULL CHECK (scope IN ('admin', 'operator', 'reader')),
    tenant       text REFERENCES tenants (id),
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_by   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CHECK (tenant IS NOT NULL OR scope = 'admin')
);

-- The one way to read a token without a tenant set: by its hash, live ones only.
-- SECURITY DEFINER (as the owner, whom FORCE binds too: hence its own af.tenant)
-- with a pinned search_path.
CREATE FUNCTION af_authenticate(hash bytea)
    RETURNS TABLE (id text, scope text, tenant text, tenant_enabled boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp SET af.tenant = '*'
    AS $$
        SELECT t.id, t.scope, t.tenant, coalesce(n.enabled, t.tenant IS NULL)
        FROM api_tokens t LEFT JOIN tenants n ON n.id = t.tenant
        WHERE t.token_hash = hash AND t.revoked_at IS NULL
    $$;
REVOKE ALL ON FUNCTION af_authenticate(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION af_authenticate(bytea) TO af_app;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (af_visible(id)) WITH CHECK (af_visible(id));

-- A token of every tenant (tenant NULL) is visible to '*' only.
ALTER TABLE api_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_tokens
    USING (af_visible(coalesce(tenant, '*'))) WITH CHECK (af_visible(coalesce(tenant, '*')));

ALTER TABLE executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON executions USING (af_visible(tenant)) WITH CHECK (af_visible(tenant));

ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE runs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON runs USING (af_visible(tenant)) WITH CHECK (af_visible(tenant));

ALTER TABLE billing_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_records
    USING (af_visible(tenant)) WITH CHECK (af_visible(tenant));
