-- 0004: least privilege and retention by the database's clock (docs/operations.md#database-roles,
-- docs/store.md#retention).
--
-- Three roles: the owner (whoever runs `course-audit migrate`: it owns every object), the
-- writer (`consume`) and the reader (`serve`). The writer and the reader are group roles
-- without login: an operator makes login roles members of them. Partition DDL needs the
-- owner, so the writer reaches it only through the two functions below, which run as the
-- owner and check their arguments; the drop function decides what has expired by the
-- database's clock, so no replica's clock (and no writer) can drop a current month.

DO $roles$
DECLARE
    may_create boolean;
BEGIN
    SELECT rolcreaterole OR rolsuper INTO may_create FROM pg_roles WHERE rolname = current_user;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'course_audit_writer')
       OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'course_audit_reader') THEN
        IF NOT may_create THEN
            RAISE EXCEPTION 'the roles course_audit_writer and course_audit_reader do not exist and % may not create roles',
                current_user
                USING HINT = 'As a role with CREATEROLE, run: CREATE ROLE course_audit_writer NOLOGIN; '
                          || 'CREATE ROLE course_audit_reader NOLOGIN; then migrate again '
                          || '(docs/operations.md#database-roles).';
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'course_audit_writer') THEN
            CREATE ROLE course_audit_writer NOLOGIN;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'course_audit_reader') THEN
            CREATE ROLE course_audit_reader NOLOGIN;
        END IF;
    END IF;
END
$roles$;

-- The reader: what the API reads, and the migration history (readiness).
GRANT SELECT ON events, courses, users, page_views, accounts, api_tokens, schema_migrations,
      course_audit_events, course_audit_dead_letters
   TO course_audit_reader;

-- The writer: what the consumer writes, and what maintenance expires.
GRANT SELECT, INSERT ON events TO course_audit_writer;
GRANT SELECT, INSERT, DELETE ON event_ids TO course_audit_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON courses, users, page_views, accounts
   TO course_audit_writer;
GRANT SELECT, INSERT, DELETE ON dead_letters TO course_audit_writer;
GRANT SELECT ON schema_migrations TO course_audit_writer;
GRANT USAGE ON SEQUENCE events_seq, dead_letters_id_seq TO course_audit_writer;

-- The first instant of the oldest month kept: events before it are past a retention of
-- `months` months, by this database's clock. Whole UTC months are kept. Less than 1: nothing
-- expires.
CREATE FUNCTION course_audit_retention_cutoff(months integer) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN months < 1 THEN '-infinity'::timestamptz
                ELSE (date_trunc('month', now() AT TIME ZONE 'UTC')
                      - make_interval(months => months)) AT TIME ZONE 'UTC' END
$$;

-- Create the monthly partitions of `months` (first days of UTC months) that are missing;
-- return the names created. Serialised by the same advisory lock as every partition change.
CREATE FUNCTION course_audit_create_partitions(months date[]) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '10s' AS $$
DECLARE
    month date;
    name text;
    created text[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('course_audit:partitions', 0));
    FOREACH month IN ARRAY months LOOP
        IF month IS NULL OR month <> date_trunc('month', month)::date
           OR month < date '1900-01-01' OR month >= date '9999-12-01' THEN
            RAISE EXCEPTION 'not the first day of a month between 1900 and 9999: %', month
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        name := format('events_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
        IF to_regclass(name) IS NULL THEN
            -- Bounds carry an explicit UTC offset so the session time zone cannot shift them.
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                name, month::text || ' 00:00:00+00',
                (month + interval '1 month')::date::text || ' 00:00:00+00');
            created := created || name;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- Drop the partitions of `events` that hold only events past a retention of `months` months
-- by this database's clock; return their names. A partition's upper bound is read from the
-- catalog, not from its name, and PostgreSQL keeps every row within its partition's bounds:
-- a partition that could hold an event newer than the cutoff is never dropped, whatever it
-- is called. Less than 1 month: nothing is dropped.
CREATE FUNCTION course_audit_drop_expired_partitions(months integer) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '10s' AS $$
DECLARE
    cutoff timestamptz := course_audit_retention_cutoff(months);
    part record;
    dropped text[] := '{}';
BEGIN
    IF months < 1 THEN
        RETURN dropped;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('course_audit:partitions', 0));
    FOR part IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass
           AND c.relname ~ '^events_y[0-9]{4}m[0-9]{2}$'
         ORDER BY c.relname
    LOOP
        IF part.upper_bound IS NOT NULL AND part.upper_bound <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped || part.relname::text;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

-- The functions run as their owner: pin where they look names up and create tables (this
-- schema; pg_catalog is always searched first, pg_temp last), and let only the writer
-- (and the owner) call the two that change partitions.
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION course_audit_create_partitions(date[]) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION course_audit_drop_expired_partitions(integer) SET search_path = %I, pg_temp', current_schema());
END
$pin$;
REVOKE ALL ON FUNCTION course_audit_create_partitions(date[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION course_audit_drop_expired_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION course_audit_create_partitions(date[]) TO course_audit_writer;
GRANT EXECUTE ON FUNCTION course_audit_drop_expired_partitions(integer) TO course_audit_writer;
