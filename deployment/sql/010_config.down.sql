-- Undoes 010: the configuration history goes (its policies and grants with it).
-- The current versions in KV af_config stay; nothing reads them without it.
DROP TABLE config_versions;
