-- Saved cost of a cache hit: its saved_* tokens at the model's list price,
-- in micro-USD, computed by the analytics service when it writes the row.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_cost_usd_micros Int64 DEFAULT 0;

-- Per-minute rollup per (account, gateway, user, model, provider). Dashboard
-- queries over long ranges read this table instead of the raw rows. Counts,
-- tokens and costs are exact sums; latency and TTFT percentiles are t-digest
-- states, so percentiles from the rollup are approximate.
--
-- A materialized view sees every inserted block, so the rollup is exact only
-- if no event is inserted twice: the analytics service drops events already
-- stored before it inserts a batch, and a retried batch carries the same
-- insert_deduplication_token, which ClickHouse drops before the view runs.
CREATE TABLE IF NOT EXISTS calls_by_minute
(
    minute DateTime('UTC'),
    account_id LowCardinality(String),
    gateway_id LowCardinality(String),
    user_id String,
    model LowCardinality(String),
    provider LowCardinality(String),
    calls SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    errors_by_type AggregateFunction(sumMap, Array(String), Array(UInt64)),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd_micros SimpleAggregateFunction(sum, Int64),
    unknown_cost_calls SimpleAggregateFunction(sum, UInt64),
    cache_hits SimpleAggregateFunction(sum, UInt64),
    saved_cost_usd_micros SimpleAggregateFunction(sum, Int64),
    latency_us AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64),
    ttft_us AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (account_id, gateway_id, minute, user_id, model, provider)
-- Lets a retried block be dropped here too (deduplicate_blocks_in_dependent_
-- materialized_views), because a non-replicated source table still runs the
-- view for a block it drops as a duplicate.
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS calls_by_minute_mv TO calls_by_minute AS
SELECT
    toStartOfMinute(start_time) AS minute,
    account_id,
    gateway_id,
    user_id,
    model,
    provider,
    count() AS calls,
    countIf(status >= 400 OR error_type != '') AS errors,
    sumMapState(
        if(status >= 400 OR error_type != '',
           [if(error_type != '', error_type, concat('http_', toString(status)))],
           []),
        if(status >= 400 OR error_type != '', [toUInt64(1)], [])
    ) AS errors_by_type,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(ifNull(call_cost, 0)) AS cost_usd_micros,
    countIf(call_cost IS NULL) AS unknown_cost_calls,
    countIf(cache_status = 'hit') AS cache_hits,
    sum(saved_cost_usd_micros) AS saved_cost_usd_micros,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency_us) AS latency_us,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(ttft_us, first_byte_time IS NOT NULL)
        AS ttft_us
-- The subquery renames the cost column, which the aggregate aliases shadow.
FROM (SELECT *, cost_usd_micros AS call_cost FROM calls)
GROUP BY minute, account_id, gateway_id, user_id, model, provider;
