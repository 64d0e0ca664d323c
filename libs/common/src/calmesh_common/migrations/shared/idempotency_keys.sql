-- The Idempotency-Keys of a service (calmesh_common.idempotency), public and internal, in one shape.
-- Shared: each service's migrations take it with a line `\include idempotency_keys`.
CREATE TABLE {schema}.idempotency_keys (
    scope         text        NOT NULL,               -- whose key: a user, a page, internal:<user>
    key           text        NOT NULL,
    request_hash  text        NOT NULL,               -- the first request's fingerprint
    status_code   integer,                            -- NULL while the first request is in flight
    content_type  text,
    body          bytea,                              -- the first answer (sealed when it holds a secret)
    created_at    timestamptz NOT NULL DEFAULT now(), -- claimed (the TTL counts from here)
    completed_at  timestamptz,                        -- answered
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON {schema}.idempotency_keys (created_at);
