-- Idempotency-Key answers of POST /webhooks: the first answer to a key, with a hash of its request.
-- The body holds the secret shown once, so it is kept encrypted like the secrets themselves.
CREATE TABLE {schema}.idempotency_keys (
    user_id       text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
