-- Undoes 002: the attempt errors and routing facts of each execution go.
ALTER TABLE executions
    DROP COLUMN errors,
    DROP COLUMN routing_key,
    DROP COLUMN priority,
    DROP COLUMN idempotency_key,
    DROP COLUMN replay;
