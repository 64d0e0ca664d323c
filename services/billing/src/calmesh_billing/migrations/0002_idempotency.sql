-- Idempotency-Key answers of POST /billing/subscribe: the first answer to a key, with a hash of
-- its request.
\include idempotency_keys_v1
