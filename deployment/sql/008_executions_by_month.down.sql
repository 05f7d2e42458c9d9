-- Undoes the monthly partitioning of executions: one plain table again, keyed by
-- run_id (the newest outcome of a run kept, should a run have two rows).
SELECT set_config('af.tenant', '*', true);

ALTER TABLE executions RENAME TO executions_partitioned;
ALTER INDEX executions_pkey RENAME TO executions_partitioned_pkey;
ALTER INDEX executions_tenant_agent_finished RENAME TO executions_partitioned_tenant_agent_finished;
ALTER INDEX executions_finished RENAME TO executions_partitioned_finished;

CREATE TABLE executions (
    run_id            text PRIMARY KEY,
    tenant            text NOT NULL,
    agent_key         text NOT NULL,
    status            text NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    input             jsonb,
    result            jsonb,
    error             text,
    enqueued_at       timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz NOT NULL,
    duration_ms       double precision,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    errors            jsonb NOT NULL DEFAULT '[]'::jsonb,
    routing_key       text,
    priority          smallint NOT NULL DEFAULT 2,
    idempotency_key   text,
    replay            integer NOT NULL DEFAULT 0,
    worker            text,
    first_started_at  timestamptz,
    audit             jsonb,
    CONSTRAINT executions_status_check
        CHECK (status IN ('succeeded', 'failed', 'expired', 'cancelled')),
    CONSTRAINT executions_priority_check CHECK (priority >= 0 AND priority <= 4),
    CONSTRAINT executions_replay_check CHECK (replay >= 0)
);
CREATE INDEX executions_tenant_agent_finished ON executions (tenant, agent_key, finished_at DESC);
CREATE INDEX executions_finished ON executions (finished_at DESC);

INSERT INTO executions
SELECT DISTINCT ON (run_id) run_id, tenant, agent_key, status, attempts, input, result, error,
       enqueued_at, started_at, finished_at, duration_ms, recorded_at, errors, routing_key, priority,
       idempotency_key, replay, worker, first_started_at, audit
FROM executions_partitioned ORDER BY run_id, finished_at DESC;

DROP TABLE executions_partitioned;  -- and every partition with it
DROP FUNCTION af_ensure_execution_partitions(timestamptz, integer);

ALTER TABLE executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON executions USING (af_visible(tenant)) WITH CHECK (af_visible(tenant));
