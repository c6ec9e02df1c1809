-- The fleet's events after an id, with this server's clock: what a sharded fleet's merged feed
-- reads from each shard (shared/src/store/sharded.rs). Every event appended to this stream
-- after this call has an id of at least NOW, so the reader may hand out every event of every
-- shard older than the least of the shards' clocks, in order, and miss none later.
-- A(1) the id to read after (exclusive), A(2) at most this many.
-- Returns {NOW, {{id, {field, value, ...}}, ...}}.
return { NOW, redis.call('XRANGE', K.events, '(' .. A(1), '+', 'COUNT', A(2)) }
