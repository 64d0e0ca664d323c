-- The gateway's state: users, sessions and API keys. Every change is also an event in
-- {schema}.events (see calmesh_common/migrations), appended in the same transaction.

CREATE TABLE {schema}.users (
    id             text        PRIMARY KEY CHECK (id ~ '^usr_[A-Za-z0-9]+$'),
    email          text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    handle         text        NOT NULL UNIQUE CHECK (handle ~ '^[a-z0-9-]{3,40}$'),
    name           text        NOT NULL DEFAULT '',
    timezone       text        NOT NULL DEFAULT 'UTC',
    password_hash  text        NOT NULL,
    plan           text        NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique whatever their case.
CREATE UNIQUE INDEX users_email_lower_key ON {schema}.users (lower(email));

-- A session's token lives only in the client's cookie; the table keeps an HMAC of it.
CREATE TABLE {schema}.sessions (
    id             text        PRIMARY KEY,
    user_id        text        NOT NULL REFERENCES {schema}.users (id),
    token_hash     text        NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    ended_at       timestamptz
);
CREATE INDEX sessions_user_idx ON {schema}.sessions (user_id);

-- An API key is shown once; the table keeps its SHA-256 and a short prefix to recognise it by.
CREATE TABLE {schema}.api_keys (
    id             text        PRIMARY KEY,
    user_id        text        NOT NULL REFERENCES {schema}.users (id),
    name           text        NOT NULL,
    scope          text        NOT NULL CHECK (scope IN ('read', 'write', 'book', 'full')),
    prefix         text        NOT NULL,
    key_hash       text        NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    last_used_at   timestamptz,
    revoked_at     timestamptz
);
CREATE INDEX api_keys_user_idx ON {schema}.api_keys (user_id, created_at, id);
