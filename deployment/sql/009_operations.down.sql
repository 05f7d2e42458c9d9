-- Undoes 009: the operations and their history go (the default privileges of
-- 007 granted af_app these tables; dropping them drops the grants).
DROP TABLE operation_events;
DROP TABLE operations;
