-- Undoes 005: the measured cost of each execution goes.
ALTER TABLE executions DROP COLUMN audit;
