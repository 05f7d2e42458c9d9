-- The permanent record keeps everything the execution.finished event carries:
-- every attempt's error (the KV run state that also holds them expires after
-- 24 h), and the routing facts the queue's flow control keys on.

ALTER TABLE executions
    ADD COLUMN errors          jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN routing_key     text,
    ADD COLUMN priority        smallint NOT NULL DEFAULT 2 CHECK (priority BETWEEN 0 AND 4),
    ADD COLUMN idempotency_key text,
    ADD COLUMN replay          integer NOT NULL DEFAULT 0 CHECK (replay >= 0);
