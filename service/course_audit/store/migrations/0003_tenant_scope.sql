-- 0003: tenancy by the root account each event was produced under (docs/api.md#tenancy).
--
-- Before: one snapshot per course, user and page view, and a course's tenant was the root
-- account of its latest snapshot, so one newer event claiming a course for another root
-- account moved the whole course there. Now every snapshot is kept per root account
-- (key: id, root_account_id), the API's page queries read one root account at a time, and
-- an account is known to a root account through the events stored under it (`accounts`).
-- See docs/store.md#tenant-scope for what a producer sending such data gets.
--
-- No index on the snapshot tables' as_of: every batch moves as_of forward on the rows it
-- touches, and an index on it would make each of those updates write index entries (no
-- HOT update); expiring old snapshots is a rare scan instead.

-- Writers of the previous version must not change snapshots while they are re-keyed below.
LOCK TABLE events, courses, users, page_views IN SHARE MODE;

-- Page queries: one index range per (course or account, root account), in the API's order.
-- An id claimed under another root account costs an unknown id's index probe, nothing more.
CREATE INDEX events_course_root_order_idx
    ON events (course_id, root_account_id, created_at DESC, seq DESC);
CREATE INDEX events_account_root_order_idx
    ON events (account_id, root_account_id, created_at DESC, seq DESC);
DROP INDEX events_course_order_idx;
DROP INDEX events_account_order_idx;

-- Courses: one snapshot per (course, root account). The existing row stays under the root
-- account it names; a root account whose events name the course but whose snapshot was
-- overwritten by another root account's gets the ids its own newest event recorded, and
-- nothing of the other root account's data.
ALTER TABLE courses DROP CONSTRAINT courses_pkey;
ALTER TABLE courses ADD PRIMARY KEY (id, root_account_id);
DROP INDEX courses_account_id_idx;
DROP INDEX courses_root_account_id_idx;
INSERT INTO courses (id, root_account_id, account_id, data, as_of)
SELECT DISTINCT ON (course_id, root_account_id)
       course_id, root_account_id, account_id,
       jsonb_build_object('id', course_id, 'account_id', account_id,
                          'root_account_id', root_account_id),
       created_at
  FROM events
 ORDER BY course_id, root_account_id, created_at DESC, seq DESC
ON CONFLICT DO NOTHING;

-- Accounts known to each root account: an account is within a token when an event stored
-- under one of its root accounts names it. as_of: the newest such event.
CREATE TABLE accounts (
    id              bigint      NOT NULL,
    root_account_id bigint      NOT NULL,
    as_of           timestamptz NOT NULL,
    PRIMARY KEY (id, root_account_id)
);
INSERT INTO accounts (id, root_account_id, as_of)
SELECT account_id, root_account_id, max(created_at)
  FROM events
 GROUP BY account_id, root_account_id;

-- Users: login_id, sis_user_id and integration_id belong to a root account's login
-- (pseudonym), so each root account keeps the user as its own events sent it. The existing
-- snapshot came from the user's newest event and goes to that event's root account; every
-- other root account the user acted in gets the user's name fields only, dated by its own
-- newest event. A snapshot no stored event refers to is dropped.
ALTER TABLE users ADD COLUMN root_account_id bigint;
UPDATE users u
   SET root_account_id = newest.root_account_id
  FROM (SELECT DISTINCT ON (user_id) user_id, root_account_id
          FROM events
         WHERE user_id IS NOT NULL
         ORDER BY user_id, created_at DESC, seq DESC) AS newest
 WHERE newest.user_id = u.id;
DELETE FROM users WHERE root_account_id IS NULL;
ALTER TABLE users ALTER COLUMN root_account_id SET NOT NULL;
ALTER TABLE users DROP CONSTRAINT users_pkey;
ALTER TABLE users ADD PRIMARY KEY (id, root_account_id);
INSERT INTO users (id, root_account_id, data, as_of)
SELECT DISTINCT ON (e.user_id, e.root_account_id)
       e.user_id, e.root_account_id,
       u.data - 'login_id' - 'sis_user_id' - 'integration_id', e.created_at
  FROM events e
  JOIN users u ON u.id = e.user_id
 WHERE e.root_account_id <> u.root_account_id
 ORDER BY e.user_id, e.root_account_id, e.created_at DESC, e.seq DESC
ON CONFLICT DO NOTHING;

-- Page views (URLs, IP addresses, user agents): each under the root account of the event
-- that carried it.
ALTER TABLE page_views ADD COLUMN root_account_id bigint;
UPDATE page_views p
   SET root_account_id = newest.root_account_id
  FROM (SELECT DISTINCT ON (page_view_id) page_view_id, root_account_id
          FROM events
         WHERE page_view_id IS NOT NULL
         ORDER BY page_view_id, created_at DESC, seq DESC) AS newest
 WHERE newest.page_view_id = p.id;
DELETE FROM page_views WHERE root_account_id IS NULL;
ALTER TABLE page_views ALTER COLUMN root_account_id SET NOT NULL;
ALTER TABLE page_views DROP CONSTRAINT page_views_pkey;
ALTER TABLE page_views ADD PRIMARY KEY (id, root_account_id);
