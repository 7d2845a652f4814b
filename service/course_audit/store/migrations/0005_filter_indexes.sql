-- 0005: indexes for the API's filters (docs/api.md#filters, docs/store.md#filter-indexes).
--
-- A page filtered by user is one range of a (course or account, root account, user) index in
-- the API's order; a page filtered by event type is one range per type of a (course or
-- account, root account, event type) index, merged. event_source gets no index of its own: it
-- is a column of a few values, checked on the rows of whichever range the page reads. Four
-- indexes, each written by every stored event: see docs/store.md#filter-indexes for the cost.
CREATE INDEX events_course_root_user_order_idx
    ON events (course_id, root_account_id, user_id, created_at DESC, seq DESC);
CREATE INDEX events_account_root_user_order_idx
    ON events (account_id, root_account_id, user_id, created_at DESC, seq DESC);
CREATE INDEX events_course_root_type_order_idx
    ON events (course_id, root_account_id, event_type, created_at DESC, seq DESC);
CREATE INDEX events_account_root_type_order_idx
    ON events (account_id, root_account_id, event_type, created_at DESC, seq DESC);
