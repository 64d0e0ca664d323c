-- The answer of a POST /webhooks with an Idempotency-Key holds the signing secret: it stays sealed
-- (MultiFernet) in the shared shape (the shared migration idempotency_keys, included below). A key
-- whose answer never came (none should exist) is not moved.
CREATE TEMPORARY TABLE kept ON COMMIT DROP AS
    SELECT user_id AS scope, key, request_hash, 201 AS status_code, NULL::text AS content_type, body,
           created_at, NULL::timestamptz AS completed_at
    FROM {schema}.idempotency_keys WHERE body IS NOT NULL;
DROP TABLE {schema}.idempotency_keys;
\include idempotency_keys
INSERT INTO {schema}.idempotency_keys SELECT * FROM kept;
