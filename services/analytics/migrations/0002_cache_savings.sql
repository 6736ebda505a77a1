-- Tokens a cache hit did not spend upstream (the usage of the stored answer).
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_input_tokens UInt64 DEFAULT 0;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_output_tokens UInt64 DEFAULT 0;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_cache_read_tokens UInt64 DEFAULT 0;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS saved_cache_write_tokens UInt64 DEFAULT 0;
