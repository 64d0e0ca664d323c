-- Busy at once (docs/contracts.md, "Reservations"): a booking is `pending` from the moment its slot
-- is checked until its time is in the projection; pending bookings count as busy here meanwhile.
ALTER TABLE {schema}.bookings DROP CONSTRAINT bookings_status_check;
ALTER TABLE {schema}.bookings ADD CONSTRAINT bookings_status_check
    CHECK (status IN ('pending', 'confirmed', 'cancelled'));
-- The Idempotency-Key scope and key of the request that made a booking (its answer is stored when
-- the booking is confirmed, by the request or by the reaper).
ALTER TABLE {schema}.bookings ADD COLUMN request_scope text;
ALTER TABLE {schema}.bookings ADD COLUMN request_key text;
-- Bumped by every reschedule: the SEQUENCE of the updated invitation.
ALTER TABLE {schema}.bookings ADD COLUMN sequence integer NOT NULL DEFAULT 0;
DROP INDEX {schema}.bookings_busy_idx;
CREATE INDEX bookings_busy_idx ON {schema}.bookings (user_id, start_at) WHERE status IN ('pending', 'confirmed');
DROP INDEX {schema}.bookings_one_per_start_idx;
CREATE UNIQUE INDEX bookings_one_per_start_idx ON {schema}.bookings (user_id, start_at)
    WHERE status IN ('pending', 'confirmed');
CREATE INDEX bookings_pending_idx ON {schema}.bookings (created_at) WHERE status = 'pending';

ALTER TABLE {schema}.pages ADD COLUMN hold_minutes integer NOT NULL DEFAULT 10
    CHECK (hold_minutes BETWEEN 1 AND 60);

-- Holds: a slot kept for a visitor (or an agent) until expires_at, busy like a booking meanwhile.
CREATE TABLE {schema}.holds (
    id          text        PRIMARY KEY,
    page_id     text        NOT NULL,
    user_id     text        NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    status      text        NOT NULL CHECK (status IN ('active', 'confirmed', 'released', 'expired')),
    booking_id  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (end_at > start_at)
);
CREATE INDEX holds_busy_idx ON {schema}.holds (user_id, start_at) WHERE status = 'active';
-- The expiry index one timer reads (the next hold to expire), not a loop per hold.
CREATE INDEX holds_expiry_idx ON {schema}.holds (expires_at) WHERE status = 'active';
