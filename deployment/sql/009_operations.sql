-- Long operations behind 202 Accepted (issue 24): deploy, drain, replay of many
-- dead letters… An operation is a row the gateway that runs it (`owner`)
-- heartbeats; its status history is `operation_events`.
--
-- `tenant` NULL is a fleet-wide operation (lifecycle, the DLQ), visible to
-- tokens of every tenant only. An `idempotency_key` names one operation per
-- tenant, whatever its kind: a retry with the same key gets the same operation.
-- `events` counts the history rows, and numbers them: whoever adds one bumps it
-- in the same transaction, so the runner and a cancel never take the same seq.

CREATE TABLE operations (
    id                   text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    kind                 text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9._-]{0,63}$'),
    tenant               text CHECK (tenant ~ '^[A-Za-z0-9_-]{1,128}$'),
    target               text NOT NULL DEFAULT '' CHECK (length(target) <= 256),
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress             real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    message              text NOT NULL DEFAULT '',
    request              jsonb NOT NULL DEFAULT '{}',
    result               jsonb,
    error                text,
    idempotency_key      text CHECK (length(idempotency_key) BETWEEN 1 AND 256),
    created_by           text NOT NULL DEFAULT '',
    owner                text,
    attempts             integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    events               integer NOT NULL DEFAULT 0 CHECK (events >= 0),
    heartbeat_at         timestamptz,
    cancel_requested_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

CREATE UNIQUE INDEX operations_idempotency ON operations (coalesce(tenant, '*'), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX operations_newest ON operations (created_at DESC, id DESC);
CREATE INDEX operations_unfinished ON operations (heartbeat_at) WHERE finished_at IS NULL;

CREATE TABLE operation_events (
    operation_id  text NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    seq           integer NOT NULL CHECK (seq >= 1),
    tenant        text,
    at            timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL,
    progress      real NOT NULL,
    message       text NOT NULL DEFAULT '',
    PRIMARY KEY (operation_id, seq)
);

ALTER TABLE operations ENABLE ROW LEVEL SECURITY;
ALTER TABLE operations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON operations
    USING (af_visible(coalesce(tenant, '*'))) WITH CHECK (af_visible(coalesce(tenant, '*')));

ALTER TABLE operation_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE operation_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON operation_events
    USING (af_visible(coalesce(tenant, '*'))) WITH CHECK (af_visible(coalesce(tenant, '*')));
