-- Agents known to the platform and every execution that reached a final state.
-- Executions are written from the af.events.execution.finished.* stream by the
-- recorder (idempotent on run_id), so replaying the stream cannot double them.

CREATE TABLE agents (
    key            text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    version        text NOT NULL,
    description    text NOT NULL DEFAULT '',
    input_schema   jsonb NOT NULL,
    output_schema  jsonb NOT NULL,
    state          text NOT NULL DEFAULT 'registered',
    registered_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE executions (
    run_id       text PRIMARY KEY,
    tenant       text NOT NULL,
    agent_key    text NOT NULL,
    status       text NOT NULL CHECK (status IN ('succeeded', 'failed', 'expired')),
    attempts     integer NOT NULL DEFAULT 0,
    input        jsonb,
    result       jsonb,
    error        text,
    enqueued_at  timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL,
    duration_ms  double precision,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX executions_tenant_agent_finished ON executions (tenant, agent_key, finished_at DESC);
CREATE INDEX executions_finished ON executions (finished_at DESC);
