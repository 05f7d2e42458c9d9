-- Agents installed from the hub (issue 26): which package a registered version's
-- code comes from. One row per installed agent version, beside its lifecycle
-- record (agent_versions); the extracted code lives on each host's data dir and
-- is extracted again from the hub, by this digest, where it is missing.
-- Platform-wide, like agent_versions: no tenant column, no row security.

CREATE TABLE installed_packages (
    agent_key     text NOT NULL,
    version       text NOT NULL,
    digest        text NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    hub_tenant    text,  -- whose package it is in the hub; NULL: public
    entry_point   text NOT NULL,
    description   text NOT NULL DEFAULT '',
    spec          jsonb NOT NULL,  -- the pack's agent.pack.yaml, as JSON
    input_schema  jsonb NOT NULL,
    output_schema jsonb NOT NULL,
    installed_by  text NOT NULL,
    installed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_key, version),
    FOREIGN KEY (agent_key, version) REFERENCES agent_versions (agent_key, version) ON DELETE CASCADE
);
