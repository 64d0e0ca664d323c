-- Booking questions (docs/api-guide.md, "Questions"): the fields a page asks besides name, email and notes,
-- as [{id, label, type, required, options?}] validated by the service; and a booking's answers as
-- [{id, label, type, value}] in the page's order, with the label it was asked under.
ALTER TABLE {schema}.pages ADD COLUMN questions jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE {schema}.bookings ADD COLUMN answers jsonb NOT NULL DEFAULT '[]'::jsonb;
