-- Booking's keys were scoped already (page:, hold:, poll:, vote:); they gain the content type and the
-- time they were answered, in the shape every service shares (the shared migration idempotency_keys,
-- included below). A kept 4xx was problem+json.
CREATE TEMPORARY TABLE kept ON COMMIT DROP AS
    SELECT scope, key, request_hash, status_code,
           CASE WHEN status_code >= 400 THEN 'application/problem+json' END AS content_type, body, created_at,
           CASE WHEN status_code IS NOT NULL THEN created_at END AS completed_at
    FROM {schema}.idempotency_keys;
DROP TABLE {schema}.idempotency_keys;
\include idempotency_keys
INSERT INTO {schema}.idempotency_keys SELECT * FROM kept;
