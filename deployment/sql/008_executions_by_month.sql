-- Executions partitioned by month (issue 24): native declarative partitioning on
-- finished_at, one partition per UTC month, so a month is dropped or archived
-- whole and a query over a time range reads only its months.
--
-- * af_ensure_execution_partitions(since, months_ahead) creates the months from
--   since's to months_ahead past the later of since and now; the gateway calls it
--   at start and every 6 hours (agents/store/partitions.py). It runs as the owner (SECURITY
--   DEFINER): the application's role creates no table.
-- * executions_default takes a row no month holds yet (a clock far off), so a
--   write is never refused; creating that month's partition moves its rows in.
-- * The key is (run_id, finished_at), as a partitioned table's must include the
--   partition column; one row per run is kept by the writer
--   (agents/store/executions.py: a per-run lock, the older outcome deleted).
-- * Partitions are reached through executions only: af_app has no grant on them,
--   so no one reads a month around the row security of the parent.
-- TimescaleDB (a hypertable with a continuous aggregate) is not in the embedded
-- server; see docs/database.md for that path.

SELECT set_config('af.tenant', '*', true);  -- FORCE binds a non-superuser owner too

ALTER TABLE executions RENAME TO executions_unpartitioned;
ALTER INDEX executions_pkey RENAME TO executions_unpartitioned_pkey;
ALTER INDEX executions_tenant_agent_finished RENAME TO executions_unpartitioned_tenant_agent_finished;
ALTER INDEX executions_finished RENAME TO executions_unpartitioned_finished;

CREATE TABLE executions (
    run_id            text NOT NULL,
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
    CONSTRAINT executions_replay_check CHECK (replay >= 0),
    PRIMARY KEY (run_id, finished_at)
) PARTITION BY RANGE (finished_at);

CREATE INDEX executions_tenant_agent_finished ON executions (tenant, agent_key, finished_at DESC);
CREATE INDEX executions_finished ON executions (finished_at DESC);

CREATE TABLE executions_default PARTITION OF executions DEFAULT;
REVOKE ALL ON executions_default FROM af_app;

CREATE FUNCTION af_ensure_execution_partitions(since timestamptz, months_ahead integer)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET af.tenant = '*'
    AS $$
DECLARE
    month timestamptz := date_trunc('month', since, 'UTC');
    last timestamptz := date_trunc('month', greatest(since, now()), 'UTC') + make_interval(months => months_ahead);
    name text;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(4146504);  -- one creator at a time, from any gateway
    WHILE month <= last LOOP
        name := 'executions_' || to_char(month AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE executions INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
            EXECUTE format('REVOKE ALL ON %I FROM af_app', name);
            EXECUTE format(
                'WITH moved AS (DELETE FROM executions_default WHERE finished_at >= %L AND finished_at < %L'
                ' RETURNING *) INSERT INTO %I SELECT * FROM moved',
                month, month + interval '1 month', name);
            EXECUTE format('ALTER TABLE executions ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           name, month, month + interval '1 month');
            made := made + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN made;
END
$$;
REVOKE ALL ON FUNCTION af_ensure_execution_partitions(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION af_ensure_execution_partitions(timestamptz, integer) TO af_app;

SELECT af_ensure_execution_partitions(coalesce((SELECT min(finished_at) FROM executions_unpartitioned), now()), 3);

INSERT INTO executions (run_id, tenant, agent_key, status, attempts, input, result, error, enqueued_at,
                        started_at, finished_at, duration_ms, recorded_at, errors, routing_key, priority,
                        idempotency_key, replay, worker, first_started_at, audit)
SELECT run_id, tenant, agent_key, status, attempts, input, result, error, enqueued_at,
       started_at, finished_at, duration_ms, recorded_at, errors, routing_key, priority,
       idempotency_key, replay, worker, first_started_at, audit
FROM executions_unpartitioned;
DROP TABLE executions_unpartitioned;

ALTER TABLE executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON executions USING (af_visible(tenant)) WITH CHECK (af_visible(tenant));
