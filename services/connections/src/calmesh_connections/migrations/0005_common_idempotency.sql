-- connections' Idempotency-Keys (its creating POSTs, per user) in the kit's one shape (the shared
-- migration idempotency_keys, included below). Kept answers (with the content type they were sent
-- with) move over.
CREATE TEMPORARY TABLE kept ON COMMIT DROP AS
    SELECT user_id AS scope, key, request_hash, status_code, content_type, response AS body, created_at,
           NULL::timestamptz AS completed_at
    FROM {schema}.idempotency_keys;
DROP TABLE {schema}.idempotency_keys;
\include idempotency_keys
INSERT INTO {schema}.idempotency_keys SELECT * FROM kept;
