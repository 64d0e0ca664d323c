-- The answer of a POST /webhooks with an Idempotency-Key holds the signing secret: it stays sealed
-- (MultiFernet) in the shared shape, the placeholder below (calmesh_common.idempotency.TABLE_SQL,
-- put there by the runner). A key whose answer never came (none should exist) is not moved.
CREATE TEMPORARY TABLE kept ON COMMIT DROP AS
    SELECT user_id AS scope, key, request_hash, 201 AS status_code, NULL::text AS content_type, body,
           created_at, NULL::timestamptz AS completed_at
    FROM {schema}.idempotency_keys WHERE body IS NOT NULL;
DROP TABLE {schema}.idempotency_keys;
{idempotency_keys_table}
INSERT INTO {schema}.idempotency_keys SELECT * FROM kept;
