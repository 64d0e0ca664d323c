-- Idempotency-Key of event-creating POSTs (docs/api-guide.md, Conventions): the first response is kept and a
-- repeat with the same key and body gets it again; a repeat with another body gets 422.
-- A row with status_code NULL is a request still in flight. Keys are forgotten after a day.
CREATE TABLE {schema}.idempotency_keys (
    user_id       text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    status_code   integer,
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON {schema}.idempotency_keys (created_at);
