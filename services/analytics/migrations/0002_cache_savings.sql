-- Usage of the original call that a cache hit answered without calling the
-- provider, so analytics can report the tokens (and their cost) the cache
-- saved. The token columns of a hit stay 0, because it consumed no tokens.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_input_tokens UInt64 DEFAULT 0;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_output_tokens UInt64 DEFAULT 0;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_cache_read_tokens UInt64 DEFAULT 0;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_cache_write_tokens UInt64 DEFAULT 0;
