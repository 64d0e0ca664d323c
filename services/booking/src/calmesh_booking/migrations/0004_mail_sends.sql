-- Booking mail is not a spam relay (docs/threat-model.md): mails to visitors' addresses are
-- counted, per page per hour and per recipient per day, and a page may require the visitor to
-- verify their address before anything is booked or mailed beyond the one verification mail.

-- One row per mail sent to a visitor's address. `id` is the mail's stable name (its file stem: the
-- booking, the kind and the sequence), so a redelivered event counts once. Rows older than a day
-- are swept.
CREATE TABLE {schema}.mail_sends (
    id          text        PRIMARY KEY,
    page_id     text        NOT NULL,
    recipient   text        NOT NULL,  -- the address, lower-cased
    kind        text        NOT NULL,  -- confirmed | rescheduled | cancelled | verify
    sent_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_sends_recipient_idx ON {schema}.mail_sends (recipient, sent_at);
CREATE INDEX mail_sends_page_idx ON {schema}.mail_sends (page_id, sent_at);
CREATE INDEX mail_sends_sent_idx ON {schema}.mail_sends (sent_at);

ALTER TABLE {schema}.pages ADD COLUMN require_email_verification boolean NOT NULL DEFAULT false;

-- A booking of such a page is `pending_verification` (its slot kept by a hold, nothing written or
-- mailed but the verification mail) until the visitor opens the link, and `expired` when the link
-- was never used in time. Neither is anyone's booking: lists and reads leave them out.
ALTER TABLE {schema}.bookings DROP CONSTRAINT bookings_status_check;
ALTER TABLE {schema}.bookings ADD CONSTRAINT bookings_status_check
    CHECK (status IN ('pending_verification', 'expired', 'pending', 'confirmed', 'cancelled'));
-- Set on bookings made through verification: until when the link works.
ALTER TABLE {schema}.bookings ADD COLUMN verify_until timestamptz;
