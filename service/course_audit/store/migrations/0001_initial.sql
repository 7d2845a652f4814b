-- 0001: events (partitioned by month), snapshots, dead letters, API tokens, public views.
-- Applied by course_audit.store.migrate in one transaction under an advisory lock.

-- The tie-break of the API's order (created_at DESC, seq DESC). A sequence rather than the
-- random event_id: 8-byte index keys instead of 16, same-second events come out in arrival
-- order, and a redelivered event keeps the seq it got the first time (ON CONFLICT DO NOTHING).
CREATE SEQUENCE events_seq AS bigint;

CREATE TABLE events (
    event_id          uuid        NOT NULL,
    created_at        timestamptz NOT NULL,
    seq               bigint      NOT NULL DEFAULT nextval('events_seq'),
    event_type        text        NOT NULL,
    event_source      text        NOT NULL,
    course_id         bigint      NOT NULL,
    account_id        bigint      NOT NULL,  -- the course's direct account at event time
    root_account_id   bigint      NOT NULL,
    user_id           bigint,
    page_view_id      text,
    sis_batch_id      bigint,
    related_course_id bigint,
    event_data        jsonb       NOT NULL,
    topic             text,
    "partition"       integer,
    "offset"          bigint,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    -- Keys of a partitioned table must contain the partition key; a redelivered event
    -- carries its original created_at, so this is still the idempotency key.
    PRIMARY KEY (event_id, created_at)
) PARTITION BY RANGE (created_at);

ALTER SEQUENCE events_seq OWNED BY events.seq;

-- The two API queries, as index range scans in the API's order (partitioned indexes: every
-- partition, present and future, gets its own).
CREATE INDEX events_course_order_idx ON events (course_id, created_at DESC, seq DESC);
CREATE INDEX events_account_order_idx ON events (account_id, created_at DESC, seq DESC);

-- Latest snapshots; as_of is the created_at of the event that carried them, so an older
-- event never overwrites a newer snapshot.
CREATE TABLE courses (
    id              bigint      PRIMARY KEY,
    root_account_id bigint      NOT NULL,
    account_id      bigint      NOT NULL,
    sis_course_id   text,
    data            jsonb       NOT NULL,
    as_of           timestamptz NOT NULL
);
CREATE INDEX courses_sis_course_id_idx ON courses (sis_course_id) WHERE sis_course_id IS NOT NULL;
CREATE INDEX courses_root_account_id_idx ON courses (root_account_id);
CREATE INDEX courses_account_id_idx ON courses (account_id);

CREATE TABLE users (
    id    bigint      PRIMARY KEY,
    data  jsonb       NOT NULL,
    as_of timestamptz NOT NULL
);

CREATE TABLE page_views (
    id    text        PRIMARY KEY,
    data  jsonb       NOT NULL,
    as_of timestamptz NOT NULL
);

CREATE TABLE dead_letters (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    "partition"   integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    key           bytea,
    value         bytea,
    headers       jsonb       NOT NULL DEFAULT '[]',  -- [[name, base64 value or null], ...]
    error_code    text        NOT NULL,
    error_message text        NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz
);
-- A poison message re-read after a crash (before its offset was committed) must not become a
-- second dead letter. The value's digest is part of the key so that a different message at
-- the same position (a deleted and re-created topic) is still kept.
CREATE UNIQUE INDEX dead_letters_source_key
    ON dead_letters (topic, "partition", "offset", sha256(coalesce(value, '')));
CREATE INDEX dead_letters_failed_at_idx ON dead_letters (failed_at);

CREATE TABLE api_tokens (
    id               bigserial   PRIMARY KEY,
    name             text        NOT NULL,
    token_hash       bytea       NOT NULL UNIQUE,  -- sha256 of the token; never the token
    root_account_ids bigint[]    NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);

-- Public, read-only interface for analysts and operators (docs/store.md#public-views): the tables behind may
-- change, these column lists do not.
CREATE VIEW course_audit_events AS
SELECT event_id, created_at, event_type, event_source, course_id, account_id, root_account_id,
       user_id, page_view_id, sis_batch_id, related_course_id, event_data,
       topic, "partition", "offset", ingested_at
  FROM events;

CREATE VIEW course_audit_dead_letters AS
SELECT topic, "partition", "offset", error_code, error_message, failed_at, replayed_at, value
  FROM dead_letters;

-- Simple views are automatically updatable in PostgreSQL; these are an interface for
-- reading, so writes through them fail loudly instead of changing the store.
CREATE FUNCTION course_audit_read_only_view() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is a read-only view', TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported';
END
$$;

CREATE TRIGGER course_audit_events_read_only
    INSTEAD OF INSERT OR UPDATE OR DELETE ON course_audit_events
    FOR EACH ROW EXECUTE FUNCTION course_audit_read_only_view();

CREATE TRIGGER course_audit_dead_letters_read_only
    INSTEAD OF INSERT OR UPDATE OR DELETE ON course_audit_dead_letters
    FOR EACH ROW EXECUTE FUNCTION course_audit_read_only_view();
