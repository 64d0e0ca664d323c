-- The readers' range scans (availability: free/busy and events of a calendar in a window) need the
-- row's end and kind with its start: carried in the index, they can be index-only scans.
CREATE INDEX event_instances_calendar_start_cover_idx ON {schema}.event_instances
    (connection_id, calendar_id, start_at) INCLUDE (end_at, all_day, start_date, end_date, status, transparency);
DROP INDEX {schema}.event_instances_calendar_start_idx;
