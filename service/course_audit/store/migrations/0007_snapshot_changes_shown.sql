-- 0007: an update announces only the snapshots it changed (docs/store.md#snapshot-changes).
--
-- 0006's triggers announced every row an UPDATE touched. The consumer's upserts move `as_of`
-- forward on nearly every course and user of a batch whose snapshot is unchanged (1,669 of
-- 1,696 course rows of a 2,000-event batch of the ingest benchmark's stream), so every API
-- process forgot texts that were still current, and every batch bumped the counter (taking
-- its lock) for them. Now an UPDATE announces the ids whose `data` changed, or whose key did;
-- one that changed no shown snapshot neither bumps nor notifies. The API shows `data` only
-- (with the row's root account, part of the key), so what it keeps stays exact. Inserts,
-- deletes and TRUNCATE are announced as before. The function is replaced whole, with its
-- owner's rights and pinned search_path as in 0006.
CREATE OR REPLACE FUNCTION course_audit_snapshots_changed() RETURNS trigger
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
        -- Only rows whose shown snapshot changed: the same key with other data, or a key
        -- changed (both its old and new id). An update that only moved `as_of` forward (most
        -- of a busy batch's: the snapshot is the same, its time is newer) changes nothing an
        -- API process keeps.
        SELECT jsonb_agg(DISTINCT coalesce(n.id, o.id)) INTO ids
          FROM old_rows o
          FULL JOIN new_rows n ON n.id = o.id AND n.root_account_id = o.root_account_id
         WHERE o.id IS NULL OR n.id IS NULL OR n.data IS DISTINCT FROM o.data;
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
