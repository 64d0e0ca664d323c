-- A provider write that failed for good (credentials refused, the calendar gone, no writable source):
-- why, and when. NULL while the write is pending or once it is written (docs/contracts.md).
ALTER TABLE {schema}.bookings ADD COLUMN calendar_write_error text;
ALTER TABLE {schema}.bookings ADD COLUMN calendar_write_failed_at timestamptz;
