-- Containment: a release whose actor tree crashed is counted and held back before any daemon
-- may claim it again; after enough crashes the daemon that claims it ends it failed.
--
-- crash_count  crashes of the release's actors (Supervisor boundary); NULL-free, 0 for rows
--              written by other programs.
-- not_before   no daemon claims the release before this time (the database's clock); NULL:
--              no backoff.
-- last_crash   what the last crash was (exception type and message), for the final error.
--
-- Dispatch intent needs no column: a node is written `running` (attempts + 1, started_at)
-- in a committed tick before its task is sent, so a node still `pending` never reached its
-- agent.
ALTER TABLE release_tasks
    ADD COLUMN crash_count integer NOT NULL DEFAULT 0 CHECK (crash_count >= 0),
    ADD COLUMN not_before timestamptz,
    ADD COLUMN last_crash text;
