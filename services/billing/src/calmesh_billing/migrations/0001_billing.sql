-- Billing: each user's account (a projection of the billing-<user_id> event stream, written in the
-- same transaction as its events) and usage counters kept from other contexts' events.

CREATE TABLE {schema}.accounts (
    user_id                 text        PRIMARY KEY,
    plan                    text        NOT NULL,
    status                  text        NOT NULL,
    current_period_end      timestamptz,
    grace_until             timestamptz,
    customer_id             text,
    mollie_subscription_id  text,
    version                 integer     NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_customer_idx ON {schema}.accounts (customer_id) WHERE customer_id IS NOT NULL;
-- the sweeper's question: whose paid period or grace period has run out
CREATE INDEX accounts_due_idx ON {schema}.accounts (status) WHERE plan = 'pro' AND status IN ('canceled', 'past_due');

-- What a user has, counted from the events of the contexts that own it (consumers.py).
CREATE TABLE {schema}.usage (
    user_id        text    NOT NULL,
    counter        text    NOT NULL,
    value          integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, counter)
);

-- Which resources are counted, so a repeated or out-of-order event never counts twice.
CREATE TABLE {schema}.usage_items (
    counter   text NOT NULL,
    item_id   text NOT NULL,
    user_id   text NOT NULL,
    PRIMARY KEY (counter, item_id)
);
