-- Runs you can find and stop (issue 19 B.6).
--
-- `runs` is the index GET /api/v1/runs lists and filters: one row per run with
-- its latest state, projected by the recorder from every write to the af_runs
-- bucket (queued records, state writes, finished events), so queued and
-- running runs are listed too. `revision` is the af_runs stream sequence of
-- the state a row shows: an upsert only moves a row forward.
--
-- A run can now end `cancelled`; an outcome records which worker ran it and
-- when its first attempt started (retries and replays keep the first).

ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('succeeded', 'failed', 'expired', 'cancelled'));
ALTER TABLE executions
    ADD COLUMN worker           text,
    ADD COLUMN first_started_at timestamptz;

CREATE TABLE runs (
    run_id       text PRIMARY KEY,
    tenant       text NOT NULL,
    agent_key    text NOT NULL,
    status       text NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'expired', 'cancelled')),
    priority     smallint NOT NULL DEFAULT 2,
    attempts     integer NOT NULL DEFAULT 0,
    replay       integer NOT NULL DEFAULT 0,
    enqueued_at  timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text,
    revision     bigint NOT NULL
);

-- Newest first, with a keyset cursor on (enqueued_at, run_id), per filter.
CREATE INDEX runs_newest ON runs (enqueued_at DESC, run_id DESC);
CREATE INDEX runs_agent_newest ON runs (agent_key, enqueued_at DESC, run_id DESC);
CREATE INDEX runs_tenant_newest ON runs (tenant, enqueued_at DESC, run_id DESC);
CREATE INDEX runs_status_newest ON runs (status, enqueued_at DESC, run_id DESC);

-- Runs recorded before the index existed (older than the bucket's 24 h).
INSERT INTO runs (run_id, tenant, agent_key, status, priority, attempts, replay,
                  enqueued_at, started_at, finished_at, error, revision)
SELECT run_id, tenant, agent_key, status, priority, attempts, replay,
       enqueued_at, started_at, finished_at, error, 0
FROM executions
ON CONFLICT (run_id) DO NOTHING;
