-- One priced execution per row (issue 23): projected from AF_BILLING by the
-- gateway's recorder, once per id however often the record was sent. Amounts
-- are integers in nano-units (1e-9) of the currency.

CREATE TABLE billing_records (
    id              text PRIMARY KEY,
    run_id          text NOT NULL,
    agent           text NOT NULL,
    tenant          text NOT NULL,
    version         text,
    status          text NOT NULL,
    finished_at     timestamptz NOT NULL,
    price_version   text NOT NULL,
    currency        text NOT NULL,
    amount_nano     bigint NOT NULL CHECK (amount_nano >= 0),
    compute_nano    bigint NOT NULL,
    tokens_nano     bigint NOT NULL,
    storage_nano    bigint NOT NULL,
    network_nano    bigint NOT NULL,
    cpu_ms          double precision NOT NULL,
    wall_ms         double precision NOT NULL,
    input_tokens    bigint NOT NULL,
    output_tokens   bigint NOT NULL,
    unpriced_tokens bigint NOT NULL,
    bytes_written   bigint NOT NULL,
    bytes_network   bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX billing_records_tenant_time ON billing_records (tenant, finished_at);
CREATE INDEX billing_records_agent_time ON billing_records (agent, finished_at);
