-- Idempotency-Key answers of POST /billing/subscribe: the first answer to a key, with a hash of
-- its request.
CREATE TABLE {schema}.idempotency_keys (
    user_id       text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
