-- Operator verbs (pause, resume, cancel, retry, rollback) and the version each node runs.
--
-- Every column has a default, so rows written with the original's columns behave as before:
-- a release without config_version applies its own version, a node row starts at attempt 1.

ALTER TABLE release_tasks
    -- The config version agents are told to apply; NULL: the release's own version.
    ADD COLUMN config_version bigint,
    -- The release a rollback release restores from (NULL for an ordinary release).
    ADD COLUMN rollback_of    bigint REFERENCES release_tasks (id) ON DELETE SET NULL,
    -- Paused because this rollback release must run first: it does not wait behind it.
    ADD COLUMN held_for       bigint,
    -- The last verb applied to the release, who gave it and why. verb_seq counts verbs;
    -- the owning daemon sets verb_acked to the verb_seq it has put in effect.
    ADD COLUMN verb           text CHECK (verb IS NULL OR verb IN
                                          ('pause', 'resume', 'cancel', 'retry', 'rollback')),
    ADD COLUMN verb_by        text,
    ADD COLUMN verb_reason    text,
    ADD COLUMN verb_seq       bigint NOT NULL DEFAULT 0,
    ADD COLUMN verb_acked     bigint NOT NULL DEFAULT 0;

ALTER TABLE release_task_nodes
    -- 1 for the first run of the node in this release, +1 at every retry that re-sends it;
    -- the taskId of attempt n > 1 carries the suffix _a{n}.
    ADD COLUMN attempt          integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    -- The config version the node ran when the release first dispatched it (at creation
    -- until then): what a rollback restores.
    ADD COLUMN previous_version bigint;

ALTER TABLE nodes
    -- The config version of the node's last success, the release version that applied it,
    -- and when: written in the fenced transaction that records the success.
    ADD COLUMN applied_version         bigint,
    ADD COLUMN applied_release_version bigint,
    ADD COLUMN applied_at              timestamptz;

CREATE INDEX release_tasks_rollback_of_idx ON release_tasks (rollback_of)
    WHERE rollback_of IS NOT NULL;
