-- The browser that opened an OAuth flow's start URL: the digest of the cookie it was given. The
-- callback completes the flow only when that cookie comes back with the state.
ALTER TABLE {schema}.oauth_states ADD COLUMN browser_hash text;
