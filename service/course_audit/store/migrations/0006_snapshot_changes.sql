-- 0006: snapshot changes announced (docs/design.md#snapshot-caches, docs/store.md#snapshot-changes).
--
-- A one-row counter, and statement-level triggers on the three snapshot tables: every
-- statement that inserts, updates or deletes snapshot rows, whoever runs it (the consumer's
-- batch statement, retention's expiry, an operator's SQL), adds one to the counter and
-- notifies `course_audit_snapshots` with the new value and the ids it changed. The bump takes
-- the counter row's lock until the transaction ends, so transactions that change snapshots
-- commit in counter order, and their notifications arrive in that order (PostgreSQL delivers
-- notifications in commit order). An API process that has applied every notification up to
-- n knows its cached snapshot texts are current for any read whose snapshot sees n.
CREATE TABLE snapshot_changes (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    n   bigint  NOT NULL
);
INSERT INTO snapshot_changes (one, n) VALUES (true, 0);

-- One function for the three tables and four kinds of change. TG_ARGV[0] is the key of the
-- ids in the notification: c (courses), u (users), p (page views). Ids only, not their root
-- accounts: a listener forgets an id under every root account, and the list fits twice as
-- many ids into a notification's 8000 bytes. A list too long for one notification goes out in
-- pieces of at most ~7,000 bytes of ids, each piece a bump of its own (consecutive, within
-- this transaction): a busy consumer's batch of a thousand new users is a few notifications,
-- never "forget everything". Only a TRUNCATE, or one id too long for a notification by
-- itself, is `"all": true`. A statement that changed no row (an upsert whose newer-wins
-- condition held nowhere) neither bumps nor notifies. Runs as the owner, so that the writer
-- needs no right on the counter (docs/operations.md#database-roles).
CREATE FUNCTION course_audit_snapshots_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    ids jsonb;
    piece jsonb;
    changes bigint;
    payload text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT jsonb_agg(DISTINCT id) INTO ids FROM new_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT jsonb_agg(DISTINCT id) INTO ids
          FROM (SELECT id FROM old_rows UNION ALL SELECT id FROM new_rows) AS changed;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT jsonb_agg(DISTINCT id) INTO ids FROM old_rows;
    ELSE
        -- TRUNCATE: no transition table, every id.
        UPDATE snapshot_changes SET n = n + 1 WHERE one RETURNING n INTO changes;
        PERFORM pg_notify('course_audit_snapshots',
                          jsonb_build_object('n', changes, 'all', true)::text);
        RETURN NULL;
    END IF;
    -- NULL (no row changed) has no elements: no bump, no notification.
    FOR piece IN
        WITH sized AS (
            SELECT id, sum(octet_length(id::text) + 1) OVER (ORDER BY ord) AS upto
              FROM jsonb_array_elements(ids) WITH ORDINALITY AS e(id, ord)
        )
        SELECT jsonb_agg(id ORDER BY upto) FROM sized GROUP BY upto / 7000 ORDER BY upto / 7000
    LOOP
        UPDATE snapshot_changes SET n = n + 1 WHERE one RETURNING n INTO changes;
        payload := jsonb_build_object('n', changes, TG_ARGV[0], piece)::text;
        IF octet_length(payload) > 7800 THEN
            payload := jsonb_build_object('n', changes, 'all', true)::text;  -- one huge id
        END IF;
        PERFORM pg_notify('course_audit_snapshots', payload);
    END LOOP;
    RETURN NULL;
END
$$;

DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION course_audit_snapshots_changed() SET search_path = %I, pg_temp', current_schema());
END
$pin$;
REVOKE ALL ON FUNCTION course_audit_snapshots_changed() FROM PUBLIC;

-- Transition tables need one trigger per kind of change.
CREATE TRIGGER courses_inserted AFTER INSERT ON courses REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('c');
CREATE TRIGGER courses_updated AFTER UPDATE ON courses
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('c');
CREATE TRIGGER courses_deleted AFTER DELETE ON courses REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('c');
CREATE TRIGGER courses_truncated AFTER TRUNCATE ON courses
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('c');

CREATE TRIGGER users_inserted AFTER INSERT ON users REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('u');
CREATE TRIGGER users_updated AFTER UPDATE ON users
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('u');
CREATE TRIGGER users_deleted AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('u');
CREATE TRIGGER users_truncated AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('u');

CREATE TRIGGER page_views_inserted AFTER INSERT ON page_views REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('p');
CREATE TRIGGER page_views_updated AFTER UPDATE ON page_views
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('p');
CREATE TRIGGER page_views_deleted AFTER DELETE ON page_views REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('p');
CREATE TRIGGER page_views_truncated AFTER TRUNCATE ON page_views
    FOR EACH STATEMENT EXECUTE FUNCTION course_audit_snapshots_changed('p');

-- The API reads the counter with its pages; the writer only through the triggers.
GRANT SELECT ON snapshot_changes TO course_audit_reader;
