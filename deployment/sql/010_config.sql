-- Agent configuration history (issue 24, "Config and tenants"; docs/config.md).
--
-- Every version of an agent's config (tenant NULL) and of each tenant's
-- override of it, kept for good: `diff` compares any two, `rollback` writes a
-- new version equal to an old one. The current version of each is also in KV
-- (af_config, the fast path workers follow); this table is written first, in
-- the same transaction that picks the version number, and the KV put follows.
--
-- Row security as 007's tables: a tenant sees and writes its own overrides
-- only; base rows (tenant NULL) are written only with every tenant ('*'), and
-- read by any transaction that set a tenant (a tenant's runs use its agent's
-- config, so the tenant may see it; unset still sees nothing). The history is
-- append-only for the application: af_app may not update or delete a version.

CREATE TABLE config_versions (
    agent       text NOT NULL CHECK (agent ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    tenant      text CHECK (tenant ~ '^[A-Za-z0-9_-]{1,128}$'),
    version     integer NOT NULL CHECK (version >= 1),
    config      jsonb NOT NULL CHECK (jsonb_typeof(config) = 'object'),
    author      text NOT NULL DEFAULT '',
    comment     text NOT NULL DEFAULT '' CHECK (length(comment) <= 500),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX config_versions_key ON config_versions (agent, coalesce(tenant, '*'), version);

REVOKE UPDATE, DELETE ON config_versions FROM af_app;

ALTER TABLE config_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE config_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON config_versions
    USING (af_visible(coalesce(tenant, '*'))) WITH CHECK (af_visible(coalesce(tenant, '*')));
CREATE POLICY base_config_readable ON config_versions FOR SELECT
    USING (tenant IS NULL AND coalesce(current_setting('af.tenant', true), '') <> '');
