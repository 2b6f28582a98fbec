-- API tokens get a role, an optional expiry and the time of their last use (written at most
-- once a minute per token). Tokens created before this migration become admin, so every
-- client that worked keeps working. Revoking a token deletes its row.
ALTER TABLE api_tokens
    ADD COLUMN role         text NOT NULL DEFAULT 'admin'
                            CHECK (role IN ('viewer', 'operator', 'admin')),
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz;

-- The API token (name and role, never the token) that asked for a release's transition.
ALTER TABLE release_events
    ADD COLUMN actor_token text,
    ADD COLUMN actor_role  text;
