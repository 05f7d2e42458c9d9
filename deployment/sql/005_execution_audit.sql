-- What running an execution cost, as its runner measured it (issue 22): a
-- sandboxed run's audit record (exit status, duration, CPU time, peak RSS,
-- bytes written, network, error category), from the finished event. NULL: the
-- run was not measured (an agent run in the worker's own process).

ALTER TABLE executions ADD COLUMN audit jsonb;
