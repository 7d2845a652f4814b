-- 0005: indexes for the API's filters (docs/api.md#filters, docs/store.md#filter-indexes).
--
-- An account's page filtered by user is one range of an (account, root account, user) index in
-- the API's order; filtered by event type, one range per type of an (account, root account,
-- event type) index, merged. A course's events are few enough that its filtered pages read the
-- course's order index range and check the filters on its rows: indexes per course would cost
-- every stored event two more index writes (about a fifth of the consumer's throughput,
-- measured). event_source gets no index of its own: it is a column of a few values. See
-- docs/store.md#filter-indexes.
CREATE INDEX events_account_root_user_order_idx
    ON events (account_id, root_account_id, user_id, created_at DESC, seq DESC);
CREATE INDEX events_account_root_type_order_idx
    ON events (account_id, root_account_id, event_type, created_at DESC, seq DESC);
