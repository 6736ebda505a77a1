-- One row per completed call through the gateway.
--
-- ReplacingMergeTree keeps one row per sorting key, so a replayed event
-- (same event_id, same account, gateway, user and start_time) collapses into
-- one row at merge time. Queries read with FINAL to get exact counts before
-- the merge. The TTL clauses below are replaced on every start with the
-- configured retention (see schema.apply_retention).
CREATE TABLE IF NOT EXISTS calls
(
    event_id UUID,
    request_id String,
    account_id LowCardinality(String),
    gateway_id LowCardinality(String),
    user_id String,
    team_id LowCardinality(String),
    key_id String,
    ingress_id LowCardinality(String),
    provider LowCardinality(String),
    endpoint LowCardinality(String),
    method LowCardinality(String),
    model LowCardinality(String),
    stream Bool,
    status UInt16,
    error_type LowCardinality(String),
    error_message String,
    stop_reason LowCardinality(String),
    start_time DateTime64(6, 'UTC'),
    first_byte_time Nullable(DateTime64(6, 'UTC')),
    end_time DateTime64(6, 'UTC'),
    latency_us UInt64,
    ttft_us UInt64,
    gateway_overhead_us UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    cache_status LowCardinality(String),
    metadata Map(LowCardinality(String), String),
    custom_cost_usd_micros Nullable(Int64),
    cost_usd_micros Nullable(Int64),
    upstream_request_id String,
    client_cancelled Bool,
    request_body String CODEC(ZSTD(3))
        TTL toDateTime(start_time) + INTERVAL 30 DAY,
    response_body String CODEC(ZSTD(3))
        TTL toDateTime(start_time) + INTERVAL 30 DAY,
    inserted_at DateTime64(6, 'UTC'),
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_metadata_keys mapKeys(metadata) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_metadata_values mapValues(metadata) TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(start_time)
ORDER BY (account_id, gateway_id, user_id, start_time, event_id)
TTL toDateTime(start_time) + INTERVAL 395 DAY
-- Non-replicated MergeTree tables deduplicate inserts by
-- insert_deduplication_token only when this window is set.
SETTINGS non_replicated_deduplication_window = 1000;
