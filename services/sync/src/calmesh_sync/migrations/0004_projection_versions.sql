-- A version per source (connection, provider calendar) of the projection, bumped by triggers in the
-- transaction of every statement that inserts, updates or deletes rows of that source (a sync, an
-- event write, a booking's rows, a purge, a rebuild, anything else): readers that keep rows in
-- memory compare it on every read, so they never answer from rows older than the projection.
-- Values come from one sequence and never repeat, even if this table is emptied.
CREATE SEQUENCE {schema}.projection_version_seq;
CREATE TABLE {schema}.projection_versions (
    connection_id   text    NOT NULL,
    calendar_id     text    NOT NULL,
    version         bigint  NOT NULL,
    PRIMARY KEY (connection_id, calendar_id)
);

CREATE FUNCTION {schema}.bump_projection_versions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {schema}.projection_versions AS v (connection_id, calendar_id, version)
        SELECT k.connection_id, k.calendar_id, nextval('{schema}.projection_version_seq')
        FROM (SELECT DISTINCT connection_id, calendar_id FROM new_rows) k
        ON CONFLICT (connection_id, calendar_id) DO UPDATE SET version = EXCLUDED.version;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {schema}.projection_versions AS v (connection_id, calendar_id, version)
        SELECT k.connection_id, k.calendar_id, nextval('{schema}.projection_version_seq')
        FROM (SELECT DISTINCT connection_id, calendar_id FROM old_rows) k
        ON CONFLICT (connection_id, calendar_id) DO UPDATE SET version = EXCLUDED.version;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {schema}.projection_versions AS v (connection_id, calendar_id, version)
        SELECT k.connection_id, k.calendar_id, nextval('{schema}.projection_version_seq')
        FROM (SELECT connection_id, calendar_id FROM new_rows UNION SELECT connection_id, calendar_id FROM old_rows) k
        ON CONFLICT (connection_id, calendar_id) DO UPDATE SET version = EXCLUDED.version;
    ELSE  -- TRUNCATE: every source changed
        UPDATE {schema}.projection_versions SET version = nextval('{schema}.projection_version_seq');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER event_instances_version_ins AFTER INSERT ON {schema}.event_instances
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {schema}.bump_projection_versions();
CREATE TRIGGER event_instances_version_upd AFTER UPDATE ON {schema}.event_instances
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION {schema}.bump_projection_versions();
CREATE TRIGGER event_instances_version_del AFTER DELETE ON {schema}.event_instances
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {schema}.bump_projection_versions();
CREATE TRIGGER event_instances_version_trunc AFTER TRUNCATE ON {schema}.event_instances
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.bump_projection_versions();
