-- Idempotency-Key answers of POST /webhooks: the first answer to a key, with a hash of its request.
-- The body holds the secret shown once, so it is kept encrypted like the secrets themselves.
\include idempotency_keys_v1
