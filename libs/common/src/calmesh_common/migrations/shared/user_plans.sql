-- Each user's current plan, kept from billing's plan.changed events (calmesh_common.plans).
-- Shared: each enforcing service's migrations take it with a line `\include user_plans`.
CREATE TABLE {schema}.user_plans (
    user_id             text        PRIMARY KEY,
    plan                text        NOT NULL,
    status              text        NOT NULL,
    current_period_end  timestamptz,
    -- version of the event in billing's per-user stream: an older event never overwrites a newer
    source_version      integer     NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
