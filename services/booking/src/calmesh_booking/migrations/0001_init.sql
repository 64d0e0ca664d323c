-- The booking context: booking pages, bookings, polls, and what it learned from other contexts.

-- Users as the gateway announced them (user.signed_up): handle for public pages, email for mails.
CREATE TABLE {schema}.users (
    user_id     text PRIMARY KEY,
    handle      text,
    email       text,
    name        text,
    timezone    text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_handle_idx ON {schema}.users (handle);

CREATE TABLE {schema}.pages (
    id                     text PRIMARY KEY,
    user_id                text        NOT NULL,
    handle                 text        NOT NULL,
    slug                   text        NOT NULL,
    calendar_slug          text        NOT NULL,
    title                  text        NOT NULL,
    description            text        NOT NULL DEFAULT '',
    duration_minutes       integer     NOT NULL CHECK (duration_minutes > 0),
    slot_interval_minutes  integer     NOT NULL CHECK (slot_interval_minutes > 0),
    timezone               text        NOT NULL,
    weekly_hours           jsonb       NOT NULL,
    date_overrides         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    buffer_before_minutes  integer     NOT NULL DEFAULT 0,
    buffer_after_minutes   integer     NOT NULL DEFAULT 0,
    min_notice_minutes     integer     NOT NULL DEFAULT 0,
    max_days_ahead         integer     NOT NULL DEFAULT 60,
    -- The calendar's timezone and sources when last asked (a fallback when connections is down).
    calendar_snapshot      jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, slug)
);
CREATE INDEX pages_handle_slug_idx ON {schema}.pages (handle, slug);

CREATE TABLE {schema}.bookings (
    id             text PRIMARY KEY,
    page_id        text        NOT NULL,
    page_slug      text        NOT NULL,
    user_id        text        NOT NULL,
    calendar_slug  text        NOT NULL,
    title          text        NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    status         text        NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    name           text        NOT NULL,
    email          text        NOT NULL,
    notes          text        NOT NULL DEFAULT '',
    timezone       text        NOT NULL,
    -- sync's evt_ id of the event written to the calendar's write target, once written.
    event_id       text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    cancelled_by   text,
    cancel_reason  text,
    CHECK (end_at > start_at)
);
-- Busy time of an owner: confirmed bookings by start.
CREATE INDEX bookings_busy_idx ON {schema}.bookings (user_id, start_at) WHERE status = 'confirmed';
-- A last line of defence behind the per-owner lock: one confirmed booking per owner and start.
CREATE UNIQUE INDEX bookings_one_per_start_idx ON {schema}.bookings (user_id, start_at) WHERE status = 'confirmed';
-- Listing with keyset paging.
CREATE INDEX bookings_list_idx ON {schema}.bookings (user_id, start_at, id);

-- Idempotency-Key answers: the first response to a key, with a hash of its request.
CREATE TABLE {schema}.idempotency_keys (
    scope         text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    status_code   integer,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE TABLE {schema}.polls (
    id                 text PRIMARY KEY,
    user_id            text        NOT NULL,
    title              text        NOT NULL,
    duration_minutes   integer     NOT NULL,
    calendar_slug      text,
    deadline           timestamptz,
    token              text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('open', 'decided')),
    decided_option_id  text,
    event_id           text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    decided_at         timestamptz
);
CREATE INDEX polls_user_idx ON {schema}.polls (user_id, created_at, id);

CREATE TABLE {schema}.poll_options (
    id        text PRIMARY KEY,
    poll_id   text        NOT NULL REFERENCES {schema}.polls (id) ON DELETE CASCADE,
    position  integer     NOT NULL,
    start_at  timestamptz NOT NULL,
    end_at    timestamptz NOT NULL,
    UNIQUE (poll_id, position)
);

CREATE TABLE {schema}.poll_votes (
    id          text PRIMARY KEY,
    poll_id     text        NOT NULL REFERENCES {schema}.polls (id) ON DELETE CASCADE,
    -- Who voted, to let a voter change their vote: lower(email), else lower(name).
    voter_key   text        NOT NULL,
    name        text        NOT NULL,
    email       text,
    choices     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (poll_id, voter_key)
);
