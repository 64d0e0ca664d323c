-- Rows written for a booking or a hold (docs/contracts.md, "Reservations"): entered into the
-- projection before the booking is answered, filled in with the provider's ids once written.
ALTER TABLE {schema}.event_instances ADD COLUMN booking_id text;
CREATE INDEX event_instances_booking_idx ON {schema}.event_instances (booking_id) WHERE booking_id IS NOT NULL;

-- Idempotency-Key answers of the internal write routes: a repeat gets the first answer.
CREATE TABLE {schema}.write_keys (
    key           text        PRIMARY KEY,
    request_hash  text        NOT NULL,
    status_code   integer     NOT NULL,
    body          bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
