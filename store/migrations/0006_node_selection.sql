-- Node labels, the node selection of a release, and the indexes of node-level exclusion.
--
-- Labels are a jsonb object of strings on each node; rows written without the column carry
-- none. A release's selection records what its creator asked for (NULL: every enabled,
-- online node, as the original); its node rows, fixed at creation, are what was selected.
-- Releases whose node sets overlap run one after the other in version order: the claim looks
-- up the nodes of active and older pending releases by (release_task_id, node_id), which the
-- unique constraint of release_task_nodes already indexes.

ALTER TABLE nodes
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT nodes_labels_check
        CHECK (jsonb_typeof(labels) = 'object'
               AND NOT jsonb_path_exists(labels, '$.* ? (@.type() != "string")'));

-- Selector lookups: labels @> '{"region": "eu"}'.
CREATE INDEX nodes_labels_idx ON nodes USING gin (labels jsonb_path_ops);

ALTER TABLE release_tasks
    ADD COLUMN selection jsonb
        CONSTRAINT release_tasks_selection_check
        CHECK (selection IS NULL OR jsonb_typeof(selection) = 'object');

-- An explicit scope is an extra serialisation between releases naming it.
CREATE INDEX release_tasks_explicit_scope_idx
    ON release_tasks (scope, version)
    WHERE scope IS NOT NULL AND status IN ('pending', 'running', 'paused');
