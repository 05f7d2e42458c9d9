-- Undoes 001: the executions record and the agents table, with their data.
DROP TABLE executions;
DROP TABLE agents;
