-- The merged-events projection (docs/contracts.md): one row per event instance per source.
-- Written only by the sync service; availability and booking read it.
CREATE TABLE {schema}.event_instances (
    event_id            text        NOT NULL,
    user_id             text        NOT NULL,
    connection_id       text        NOT NULL,
    calendar_id         text        NOT NULL,
    uid                 text        NOT NULL,
    recurrence_id       text        NOT NULL DEFAULT '',
    recurring_event_id  text,
    provider_event_id   text,
    title               text        NOT NULL DEFAULT '',
    description         text,
    location            text,
    start_at            timestamptz NOT NULL,
    end_at              timestamptz NOT NULL,
    all_day             boolean     NOT NULL DEFAULT false,
    start_date          date,
    end_date            date,
    status              text        NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'tentative', 'cancelled')),
    transparency        text        NOT NULL DEFAULT 'busy' CHECK (transparency IN ('busy', 'free')),
    updated_at          timestamptz NOT NULL,
    -- internal to sync: a digest of the content, so an unchanged instance costs no write
    fingerprint         text        NOT NULL DEFAULT '',
    PRIMARY KEY (connection_id, calendar_id, uid, recurrence_id)
);
CREATE INDEX event_instances_calendar_start_idx ON {schema}.event_instances (connection_id, calendar_id, start_at);
CREATE UNIQUE INDEX event_instances_event_id_idx ON {schema}.event_instances (event_id);
CREATE INDEX event_instances_provider_idx ON {schema}.event_instances (connection_id, calendar_id, provider_event_id);

-- Where each provider calendar's incremental sync stands: ETag/Last-Modified/body digest (iCal),
-- sync-token/CTag (CalDAV), syncToken (Google), deltaLink (Graph); and the window it covers.
CREATE TABLE {schema}.calendar_state (
    connection_id   text        NOT NULL,
    calendar_id     text        NOT NULL,
    cursor          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    window_start    timestamptz,
    window_end      timestamptz,
    synced_at       timestamptz,
    PRIMARY KEY (connection_id, calendar_id)
);

-- The CalDAV objects last seen (href, ETag, data): deletions by href, If-Match on writes, and a
-- window move re-expands them without asking the server again.
CREATE TABLE {schema}.source_objects (
    connection_id   text        NOT NULL,
    calendar_id     text        NOT NULL,
    href            text        NOT NULL,
    etag            text,
    data            text        NOT NULL,
    PRIMARY KEY (connection_id, calendar_id, href)
);

-- Connections deleted by their user: a sync still running for one writes nothing more.
CREATE TABLE {schema}.removed_connections (
    connection_id   text        PRIMARY KEY,
    user_id         text,
    removed_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per sync attempt (a redelivered job is a new attempt of the same sync_id).
CREATE TABLE {schema}.sync_runs (
    id              bigserial   PRIMARY KEY,
    sync_id         text        NOT NULL,
    connection_id   text        NOT NULL,
    worker_id       text        NOT NULL DEFAULT '',
    reason          text        NOT NULL DEFAULT '',
    requested_at    timestamptz,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    outcome         text,
    error           text
);
CREATE INDEX sync_runs_connection_idx ON {schema}.sync_runs (connection_id, started_at);
