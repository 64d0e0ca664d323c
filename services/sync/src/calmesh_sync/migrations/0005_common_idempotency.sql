-- The internal writes' keys, scoped by the user a write is for, in the kit's shape (the shared
-- migration idempotency_keys, included below). write_keys had no scope and held answers a
-- redelivery repeats within seconds (a booking's event UID derives from the booking anyway):
-- dropped, not moved.
DROP TABLE {schema}.write_keys;
\include idempotency_keys
