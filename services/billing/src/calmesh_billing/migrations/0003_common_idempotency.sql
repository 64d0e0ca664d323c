-- Billing kept only the checkout answer (a 201) per user and key, for ever. Now: the kit's shape
-- (the shared migration idempotency_keys, included below), 24 hours. The answers kept so far move
-- over as 201s.
CREATE TEMPORARY TABLE kept ON COMMIT DROP AS
    SELECT user_id AS scope, key, request_hash, 201 AS status_code, 'application/json' AS content_type, body,
           created_at, created_at AS completed_at
    FROM {schema}.idempotency_keys WHERE body IS NOT NULL;
DROP TABLE {schema}.idempotency_keys;
\include idempotency_keys
INSERT INTO {schema}.idempotency_keys SELECT * FROM kept;
