-- Webhooks: the release.gate kind, a release that reached a gate of its strategy and waits for
-- a promote (its step event, written by the daemon holding it: "step N: gate: waits for
-- promote"). The trigger function of 0007 is replaced whole with one that also queues that
-- kind, and queues release.paused only for an event into paused (0007 also queued it for the
-- owner's lease release that follows a pause, paused -> paused: two deliveries for one
-- pause); the trigger itself, the tables and every other kind are unchanged.

CREATE OR REPLACE FUNCTION fleetwave_release_events_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM inserted) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('fleetwave_event', '');
    IF NOT EXISTS (SELECT 1 FROM webhooks) THEN
        RETURN NULL;
    END IF;
    WITH kinds AS (
        SELECT e.*, 'release.started' AS kind FROM inserted e
        WHERE e.node_id IS NULL AND e.to_status = 'running' AND e.from_status = 'pending'
        UNION ALL
        SELECT e.*, 'release.finished' FROM inserted e
        WHERE e.node_id IS NULL AND e.to_status IN ('success', 'failed', 'cancelled')
        UNION ALL
        SELECT e.*, 'release.failed' FROM inserted e
        WHERE e.node_id IS NULL AND e.to_status = 'failed'
        UNION ALL
        SELECT e.*, 'release.paused' FROM inserted e
        -- Into paused: the owner's "lease released ... paused" event that follows is not a
        -- second pause.
        WHERE e.node_id IS NULL AND e.to_status = 'paused'
          AND e.from_status IS DISTINCT FROM 'paused'
        UNION ALL
        -- The step event of a release reaching a gate (store/webhooks.py's GATE_WAITING).
        SELECT e.*, 'release.gate' FROM inserted e
        WHERE e.node_id IS NULL AND e.message ~ '^step [0-9]+: gate: waits for promote$'
        UNION ALL
        SELECT e.*, 'node.failed' FROM inserted e
        WHERE e.node_id IS NOT NULL AND e.to_status = 'failed'
        UNION ALL
        -- The last node of a batch to end (from running) ends the batch, once.
        SELECT last.*, 'batch.finished' FROM (
            SELECT DISTINCT ON (e.release_task_id, e.batch) e.*
            FROM inserted e
            WHERE e.node_id IS NOT NULL AND e.from_status = 'running'
              AND e.to_status IN ('success', 'failed', 'cancelled')
            ORDER BY e.release_task_id, e.batch, e.id DESC
        ) last
        WHERE NOT EXISTS (
            SELECT 1 FROM release_task_nodes n
            WHERE n.release_task_id = last.release_task_id AND n.batch = last.batch
              AND n.status IN ('pending', 'running')
        )
    )
    INSERT INTO webhook_deliveries (webhook_id, event_id, kind, payload)
        SELECT h.id, k.id, k.kind, jsonb_build_object(
            'idempotencyKey', format('fleetwave-%s-%s-%s', h.id, k.id, k.kind),
            'kind', k.kind,
            'eventId', k.id,
            'releaseId', k.release_task_id,
            'version', r.version,
            'target', r.target,
            'releaseStatus', r.status,
            'totalNodes', r.total_nodes,
            'successNodes', (SELECT count(*) FROM release_task_nodes n
                             WHERE n.release_task_id = k.release_task_id
                               AND n.status = 'success'),
            'failedNodes', (SELECT count(*) FROM release_task_nodes n
                            WHERE n.release_task_id = k.release_task_id
                              AND n.status = 'failed'),
            'batch', k.batch,
            'node', CASE WHEN k.node_id IS NULL THEN NULL ELSE jsonb_build_object(
                'id', k.node_id, 'name', d.name, 'mainIp', d.main_ip) END,
            'fromStatus', k.from_status,
            'toStatus', k.to_status,
            'message', k.message,
            'daemonId', k.daemon_id,
            'batchCounts', CASE WHEN k.kind <> 'batch.finished' THEN NULL ELSE (
                SELECT jsonb_object_agg(c.status, c.count) FROM (
                    SELECT n.status, count(*) AS count FROM release_task_nodes n
                    WHERE n.release_task_id = k.release_task_id AND n.batch = k.batch
                    GROUP BY n.status
                ) c) END,
            'createdAt', to_char(k.created_at AT TIME ZONE 'UTC',
                                 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        )
        FROM kinds k
        JOIN webhooks h ON k.kind = ANY (h.events)
        JOIN release_tasks r ON r.id = k.release_task_id
        LEFT JOIN nodes d ON d.id = k.node_id
        -- Within an event, kinds in the order store/webhooks.py lists them.
        ORDER BY k.id, array_position(ARRAY['release.started', 'release.finished',
                 'release.failed', 'release.paused', 'release.gate', 'batch.finished',
                 'node.failed'], k.kind),
                 h.id
        ON CONFLICT (webhook_id, event_id, kind) DO NOTHING;
    RETURN NULL;
END $$;
