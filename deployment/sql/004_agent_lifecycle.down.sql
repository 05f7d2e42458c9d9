-- Undoes 004: lifecycle states and their history go.
DROP TABLE lifecycle_transitions;
DROP TABLE agent_versions;
