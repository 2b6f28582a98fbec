-- API tokens are looked up by the first 16 hex characters of their SHA-256 (the
-- TOKEN_LOOKUP_CHARS of store/models.py); the whole hash is then compared in constant time.
CREATE INDEX api_tokens_hash_prefix_idx ON api_tokens (left(token_hash, 16));
