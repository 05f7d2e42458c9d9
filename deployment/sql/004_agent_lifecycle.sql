-- How an agent lives (issue 22): each version's lifecycle state, and every
-- transition as an audit row (who, when, from, to, why).
--
-- `revision` counts a version's transitions: a manager writes a transition
-- only if the revision it read is still the row's (a fence behind the KV lock,
-- for a holder whose lock expired while it worked).
-- `published_at` is set once the transition's lifecycle.changed event is
-- stored on AF_EVENTS; rows without it are published again (an outbox).

CREATE TABLE agent_versions (
    agent_key   text NOT NULL CHECK (agent_key ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    version     text NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    state       text NOT NULL DEFAULT 'created' CHECK (state IN (
                    'created', 'validating', 'validated', 'deploying', 'warming_up', 'running',
                    'degraded', 'draining', 'retired', 'failed', 'force_stopped')),
    mode        text NOT NULL DEFAULT 'pool' CHECK (mode IN ('pool', 'dedicated')),
    reason      text,
    revision    bigint NOT NULL DEFAULT 0 CHECK (revision >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_key, version)
);

CREATE TABLE lifecycle_transitions (
    id            bigserial PRIMARY KEY,
    agent_key     text NOT NULL,
    version       text NOT NULL,
    from_state    text NOT NULL,
    to_state      text NOT NULL,
    actor         text NOT NULL,
    reason        text,
    at            timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    FOREIGN KEY (agent_key, version) REFERENCES agent_versions (agent_key, version) ON DELETE CASCADE
);

CREATE INDEX lifecycle_transitions_history ON lifecycle_transitions (agent_key, id DESC);
CREATE INDEX lifecycle_transitions_unpublished ON lifecycle_transitions (id) WHERE published_at IS NULL;
