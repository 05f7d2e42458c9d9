-- Budgets and quotas on record, and the Agent Hub's package index (issue 24 asks
-- for the tables the platform needs from here on).
--
-- `limit_changes`: every budget and quota put or removed through the API, with
-- who and when. The live definitions stay in KV af_budgets (the metering
-- processor and the queue read them there); this is their audit, and what a
-- budget was on a given day. `tenant` is the limit's scope: a tenant's token sees
-- the changes of its own limits, an agent-wide limit (tenant NULL) only tokens of
-- every tenant.
--
-- `hub_packages`: one row per published agent package version (issue 26 fills
-- it: the blob is in the JetStream object store, named by `object`, verified by
-- `digest`). `tenant` NULL is a public package: every tenant reads it; a
-- tenant's private package only that tenant. Writing a public one needs a token
-- of every tenant. `search` (name and description) and `tags` are what
-- `agent search` queries.

CREATE TABLE limit_changes (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('budget', 'quota')),
    limit_id    text NOT NULL CHECK (limit_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    action      text NOT NULL CHECK (action IN ('put', 'remove')),
    tenant      text CHECK (tenant ~ '^[A-Za-z0-9_-]{1,128}$'),
    agent       text,
    definition  jsonb,
    actor       text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((action = 'put') = (definition IS NOT NULL))
);
CREATE INDEX limit_changes_history ON limit_changes (kind, limit_id, id DESC);

ALTER TABLE limit_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE limit_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON limit_changes
    USING (af_visible(coalesce(tenant, '*'))) WITH CHECK (af_visible(coalesce(tenant, '*')));
REVOKE UPDATE, DELETE ON limit_changes FROM af_app;  -- an audit: appended to, never rewritten

CREATE TABLE hub_packages (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    version       text NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    tenant        text CHECK (tenant ~ '^[A-Za-z0-9_-]{1,128}$'),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    tags          text[] NOT NULL DEFAULT '{}',
    digest        text NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    object        text NOT NULL,
    publisher     text NOT NULL DEFAULT '',
    signature_key text,
    manifest      jsonb NOT NULL DEFAULT '{}',
    downloads     bigint NOT NULL DEFAULT 0 CHECK (downloads >= 0),
    published_at  timestamptz NOT NULL DEFAULT now(),
    yanked_at     timestamptz,
    search        tsvector GENERATED ALWAYS AS (to_tsvector('simple', name || ' ' || description)) STORED
);
CREATE UNIQUE INDEX hub_packages_version ON hub_packages (coalesce(tenant, '*'), name, version);
CREATE INDEX hub_packages_search ON hub_packages USING gin (search);
CREATE INDEX hub_packages_tags ON hub_packages USING gin (tags);

ALTER TABLE hub_packages ENABLE ROW LEVEL SECURITY;
ALTER TABLE hub_packages FORCE ROW LEVEL SECURITY;
CREATE POLICY public_or_own ON hub_packages FOR SELECT USING (tenant IS NULL OR af_visible(tenant));
CREATE POLICY tenant_writes ON hub_packages FOR INSERT WITH CHECK (af_visible(coalesce(tenant, '*')));
CREATE POLICY tenant_updates ON hub_packages FOR UPDATE
    USING (af_visible(coalesce(tenant, '*'))) WITH CHECK (af_visible(coalesce(tenant, '*')));
CREATE POLICY tenant_deletes ON hub_packages FOR DELETE USING (af_visible(coalesce(tenant, '*')));
