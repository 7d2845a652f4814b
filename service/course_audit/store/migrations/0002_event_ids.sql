-- 0002: an event_id is stored at most once, whatever its created_at.
-- The key of the partitioned `events` must contain its partition key, so it is
-- (event_id, created_at); this unpartitioned table holds every stored event_id once, with the
-- created_at it was stored with. The batch statement claims an id here before it inserts the
-- event (store/writer.py), so a second message with the same id and another created_at finds
-- it taken. See docs/design.md#idempotency-key.

-- Old writers must not add events while the backfill below reads them: an event stored after
-- this snapshot would have no entry (consumers of the previous version wait until commit).
LOCK TABLE events IN SHARE MODE;

CREATE TABLE event_ids (
    event_id   uuid        PRIMARY KEY,
    created_at timestamptz NOT NULL
);

-- Retention deletes the ids of the months it drops (store/partitions.py drop_expired). Ids are
-- inserted roughly in created_at order, so a block range index is enough to find the old ones
-- and costs next to nothing to keep up.
CREATE INDEX event_ids_created_at_idx ON event_ids USING brin (created_at)
    WITH (autosummarize = on);

-- Events already stored: each id once, with its first stored row (lowest seq). An id stored
-- twice before this migration keeps both rows; a later message with that id is compared with
-- the first. (Safe to run again: docs/store.md#migrations.)
INSERT INTO event_ids (event_id, created_at)
SELECT DISTINCT ON (event_id) event_id, created_at
  FROM events
 ORDER BY event_id, seq
ON CONFLICT DO NOTHING;
