-- availability's Idempotency-Keys move to the one shape of calmesh_common.idempotency: the shared
-- migration idempotency_keys is included below. The keys kept so far (a user's, of
-- POST /calendars/{slug}/events) move over with their answers; a kept refusal is problem+json.
CREATE TEMPORARY TABLE kept ON COMMIT DROP AS
    SELECT user_id AS scope, key, request_hash, status_code,
           CASE WHEN status_code >= 400 THEN 'application/problem+json' END AS content_type,
           response AS body, created_at, completed_at
    FROM {schema}.idempotency_keys;
DROP TABLE {schema}.idempotency_keys;
\include idempotency_keys
INSERT INTO {schema}.idempotency_keys SELECT * FROM kept;
