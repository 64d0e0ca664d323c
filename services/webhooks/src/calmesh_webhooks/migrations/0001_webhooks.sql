-- Webhook subscriptions, the messages to deliver, the delivery state machine and one row per attempt.
-- Everything a dispatcher needs to resume after a crash lives here: a delivery is claimed with a
-- lease (locked_until) and finished in the database, so a dispatcher killed mid-delivery loses
-- nothing; the next one retries it with the same webhook-id once the lease runs out.

CREATE TABLE {schema}.subscriptions (
    id                     text        PRIMARY KEY,
    user_id                text        NOT NULL,
    url                    text        NOT NULL,
    event_types            text[]      NOT NULL,
    description            text        NOT NULL DEFAULT '',
    status                 text        NOT NULL CHECK (status IN ('active', 'disabled')),
    disabled_reason        text,
    -- Fernet tokens (MultiFernet over CALMESH_ENCRYPTION_KEYS) of the whsec_ secrets
    secret                 bytea       NOT NULL,
    previous_secret        bytea,
    previous_secret_until  timestamptz,
    -- first failure since the last success; a subscription failing for too long is disabled
    failing_since          timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_idx ON {schema}.subscriptions (user_id, created_at, id);

-- The signed body of each event, built once: every attempt and every replay sends the same bytes.
CREATE TABLE {schema}.messages (
    event_id     text        PRIMARY KEY,
    user_id      text,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One delivery of one message to one subscription (a replay or a test adds another).
CREATE TABLE {schema}.deliveries (
    id               bigserial   PRIMARY KEY,
    subscription_id  text        NOT NULL REFERENCES {schema}.subscriptions (id) ON DELETE CASCADE,
    event_id         text        NOT NULL REFERENCES {schema}.messages (event_id),
    event_type       text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    locked_until     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due_idx ON {schema}.deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_subscription_idx ON {schema}.deliveries (subscription_id, id);

-- One row per attempt, as GET /webhooks/{id}/deliveries lists them. `pending` while in flight.
CREATE TABLE {schema}.attempts (
    seq              bigserial   PRIMARY KEY,
    id               text        NOT NULL UNIQUE,
    delivery_id      bigint      NOT NULL REFERENCES {schema}.deliveries (id) ON DELETE CASCADE,
    subscription_id  text        NOT NULL,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    attempt          integer     NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    response_status  integer,
    duration_ms      integer,
    error            text,
    next_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX attempts_subscription_idx ON {schema}.attempts (subscription_id, seq);
CREATE INDEX attempts_delivery_idx ON {schema}.attempts (delivery_id);

-- POST /webhooks/{id}/replay: read the domain streams from `since` again, run by any dispatcher.
CREATE TABLE {schema}.replays (
    id               text        PRIMARY KEY,
    subscription_id  text        NOT NULL REFERENCES {schema}.subscriptions (id) ON DELETE CASCADE,
    since            timestamptz NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    locked_until     timestamptz,
    enqueued         integer     NOT NULL DEFAULT 0,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX replays_open_idx ON {schema}.replays (created_at) WHERE status IN ('pending', 'running');
