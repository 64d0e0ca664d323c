-- API requests made with a user's keys, per UTC day: the plan's daily quota is checked against it.
-- Each gateway replica counts in memory and adds its counts here every few seconds.
CREATE TABLE {schema}.api_usage (
    user_id   text    NOT NULL,
    day       date    NOT NULL,
    requests  bigint  NOT NULL DEFAULT 0 CHECK (requests >= 0),
    PRIMARY KEY (user_id, day)
);
