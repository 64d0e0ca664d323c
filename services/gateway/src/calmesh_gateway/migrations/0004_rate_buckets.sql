-- Token buckets shared by every gateway replica (per key, per user, per client address, failed
-- sign-ins). A replica takes tokens in small batches (a lease) and spends them in memory; what it
-- does not spend within about a second it gives back. UNLOGGED: rate-limit state is worth less than
-- the write-ahead log it would cost; after a crash the buckets simply start full.
CREATE UNLOGGED TABLE {schema}.rate_buckets (
    name     text              PRIMARY KEY,
    tokens   double precision  NOT NULL,
    at       timestamptz       NOT NULL,
    -- When the bucket is full again (then the row can go: a missing row is a full bucket).
    full_at  timestamptz       NOT NULL
);
CREATE INDEX rate_buckets_full_at ON {schema}.rate_buckets (full_at);

-- Take up to p_want tokens from bucket p_name (capacity p_burst, p_rate tokens a second).
-- Returns how many were granted and how many are left; a missing bucket starts full.
CREATE FUNCTION {schema}.take_tokens(p_name text, p_want integer, p_burst double precision, p_rate double precision,
                                     OUT o_granted integer, OUT o_left double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_tokens double precision;
    v_at timestamptz;
    v_now timestamptz;
BEGIN
    INSERT INTO {schema}.rate_buckets AS b (name, tokens, at, full_at)
    VALUES (p_name, p_burst, clock_timestamp(), clock_timestamp())
    ON CONFLICT (name) DO NOTHING;
    SELECT b.tokens, b.at INTO v_tokens, v_at FROM {schema}.rate_buckets b WHERE b.name = p_name FOR UPDATE;
    -- The time is read once the row is locked, so a bucket's clock never runs backwards.
    v_now := clock_timestamp();
    v_tokens := LEAST(p_burst, v_tokens + GREATEST(0, EXTRACT(EPOCH FROM v_now - v_at)) * p_rate);
    o_granted := LEAST(p_want, floor(v_tokens)::integer);
    o_left := v_tokens - o_granted;
    UPDATE {schema}.rate_buckets b
       SET tokens = o_left, at = v_now, full_at = v_now + make_interval(secs => (p_burst - o_left) / p_rate)
     WHERE b.name = p_name;
END
$$;

-- Give back tokens a replica leased and did not spend.
CREATE FUNCTION {schema}.give_back_tokens(p_names text[], p_counts integer[], p_burst double precision,
                                          p_rate double precision)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    r record;
BEGIN
    FOR r IN SELECT g.name, g.n FROM unnest(p_names, p_counts) AS g(name, n) ORDER BY g.name LOOP
        PERFORM 1 FROM {schema}.rate_buckets b WHERE b.name = r.name FOR UPDATE;
        v_now := clock_timestamp();
        UPDATE {schema}.rate_buckets b
           SET tokens = LEAST(p_burst, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM v_now - b.at)) * p_rate + r.n),
               at = v_now
         WHERE b.name = r.name;
        UPDATE {schema}.rate_buckets b
           SET full_at = v_now + make_interval(secs => (p_burst - b.tokens) / p_rate)
         WHERE b.name = r.name;
    END LOOP;
END
$$;
