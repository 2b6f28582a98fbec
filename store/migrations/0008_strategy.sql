-- Rollout strategies: a release's steps (pauses between batches), failure budgets and what a
-- failure does, and where in its schedule the release is, so that a new owner resumes there.
--
-- Every column has a default: a release written without them runs its plan's batches one after
-- another with no pause, as before.

ALTER TABLE release_tasks
    -- The strategy as validated (store/strategy.py): {"plan": [...], "maxFailures": N,
    -- "maxFailurePercent": P, "onFailure": "stop"}. NULL: the plan and max_failures columns.
    ADD COLUMN strategy     jsonb,
    -- The position in the release's schedule (its batches, each followed by its pauses) the
    -- release has reached: every step before it is done.
    ADD COLUMN step         integer NOT NULL DEFAULT 0 CHECK (step >= 0),
    -- When the bake the release is at ends (by the database's clock); NULL outside a bake.
    ADD COLUMN step_ends_at timestamptz,
    -- A promote passes every pause before this position (a full promote: all of them).
    ADD COLUMN promoted_to  integer NOT NULL DEFAULT 0 CHECK (promoted_to >= 0);

ALTER TABLE release_tasks DROP CONSTRAINT IF EXISTS release_tasks_verb_check;
ALTER TABLE release_tasks ADD CONSTRAINT release_tasks_verb_check CHECK (
    verb IS NULL OR verb IN ('pause', 'resume', 'cancel', 'retry', 'rollback', 'promote'));
