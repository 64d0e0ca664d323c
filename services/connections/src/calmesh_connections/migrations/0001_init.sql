-- Connections (credentials encrypted with MultiFernet), OAuth states, unified calendars and their
-- sources, push channels.

CREATE TABLE {schema}.connections (
    id              text        PRIMARY KEY,
    user_id         text        NOT NULL,
    provider        text        NOT NULL CHECK (provider IN ('google', 'microsoft', 'icloud', 'caldav', 'ical')),
    display_name    text        NOT NULL DEFAULT '',
    status          text        NOT NULL CHECK (status IN ('pending', 'syncing', 'active', 'error', 'revoked')),
    -- why the last sync failed: auth | revoked | source | transient (auth and revoked wait for the user)
    error_kind      text,
    last_error      text,
    last_synced_at  timestamptz,
    -- non-secret settings: url, username, redirect_uri
    settings        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Fernet token of a JSON object: {password} or {access_token, refresh_token, expires_at, scope}
    credentials     bytea,
    token_expires_at timestamptz,
    -- provider calendars: [{id, name, color, read_only, ref}]
    calendars       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    user_timezone   text        NOT NULL DEFAULT 'UTC',
    -- the running sync: {sync_id, started_at, calendars_done, calendars_total, events_changed}
    sync            jsonb,
    next_sync_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connections_user_idx ON {schema}.connections (user_id, created_at, id);
CREATE INDEX connections_due_idx ON {schema}.connections (next_sync_at) WHERE next_sync_at IS NOT NULL;

-- OAuth authorization requests: the state (stored as a digest) is single-use and bound to the user.
CREATE TABLE {schema}.oauth_states (
    state_hash      text        PRIMARY KEY,
    connection_id   text        NOT NULL,
    user_id         text        NOT NULL,
    provider        text        NOT NULL,
    code_verifier   bytea       NOT NULL,
    return_to       text,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_states_connection_idx ON {schema}.oauth_states (connection_id);

CREATE TABLE {schema}.calendars (
    id              text        PRIMARY KEY,
    user_id         text        NOT NULL,
    slug            text        NOT NULL,
    name            text        NOT NULL,
    timezone        text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, slug)
);
CREATE INDEX calendars_user_idx ON {schema}.calendars (user_id, created_at, id);

CREATE TABLE {schema}.calendar_sources (
    id              text        PRIMARY KEY,
    calendar_id     text        NOT NULL REFERENCES {schema}.calendars (id) ON DELETE CASCADE,
    connection_id   text        NOT NULL,
    provider_calendar_id text   NOT NULL,
    name            text        NOT NULL,
    sort_order      integer     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (calendar_id, connection_id, provider_calendar_id)
);
CREATE INDEX calendar_sources_connection_idx ON {schema}.calendar_sources (connection_id);

-- Google watch channels and Graph subscriptions. The secret (channel token / clientState) is kept
-- as a digest only.
CREATE TABLE {schema}.push_channels (
    id              text        PRIMARY KEY,
    connection_id   text        NOT NULL,
    provider        text        NOT NULL,
    calendar_ref    text        NOT NULL,
    channel_id      text        NOT NULL UNIQUE,
    resource_id     text,
    secret_hash     text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_channels_connection_idx ON {schema}.push_channels (connection_id);
CREATE INDEX push_channels_expiry_idx ON {schema}.push_channels (expires_at);
