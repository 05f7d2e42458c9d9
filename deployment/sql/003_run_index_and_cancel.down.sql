-- Undoes 003. Refused (the constraint fails) while an execution is recorded
-- as cancelled: 002 cannot hold that status, and rewriting it would lie.
DROP TABLE runs;
ALTER TABLE executions
    DROP COLUMN worker,
    DROP COLUMN first_started_at;
ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('succeeded', 'failed', 'expired'));
