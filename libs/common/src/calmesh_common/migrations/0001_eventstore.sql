-- The event store, the transactional outbox and the consumer tracking rows that every service
-- keeps in its own schema. "{schema}" is replaced by the service's schema name.

CREATE TABLE {schema}.events (
    position      bigserial PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    stream_id     text        NOT NULL,
    version       integer     NOT NULL CHECK (version >= 1),
    type          text        NOT NULL,
    user_id       text,
    occurred_at   timestamptz NOT NULL,
    envelope      bytea       NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX events_type_idx ON {schema}.events (type, position);

-- One row per event to publish; the relay publishes in position order and marks the row.
CREATE TABLE {schema}.outbox (
    position      bigserial PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    subject       text        NOT NULL,
    payload       bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished_idx ON {schema}.outbox (position) WHERE published_at IS NULL;

-- A consumer records each message it has applied in the same transaction as the effect.
CREATE TABLE {schema}.processed_messages (
    consumer      text        NOT NULL,
    event_id      text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
