-- The first shape of a service's Idempotency-Key answers (one per user and key), which billing and
-- webhooks kept before the common table (shared idempotency_keys) replaced it.
-- Shared: their 0002 migrations take it with a line `\include idempotency_keys_v1`.
CREATE TABLE {schema}.idempotency_keys (
    user_id       text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
