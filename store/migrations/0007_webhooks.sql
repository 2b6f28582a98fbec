-- Event notifications and webhooks.
--
-- Every statement that appends release_events rows (whoever runs it: a daemon, the API,
-- another program) sends one NOTIFY on fleetwave_event, which the daemons' event streams
-- LISTEN to, and writes the webhook deliveries those events call for into the outbox
-- (webhook_deliveries) in the same transaction: an event is never committed without its
-- deliveries, nor a delivery without its event.

CREATE TABLE webhooks (
    id          bigserial PRIMARY KEY,
    url         text NOT NULL CHECK (url ~ '^https?://'),
    -- Kinds of event delivered (release.started, release.finished, release.failed,
    -- release.paused, batch.finished, node.failed).
    events      text[] NOT NULL CHECK (cardinality(events) > 0),
    -- The HMAC-SHA256 key deliveries are signed with (the receiver holds the same).
    secret      text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    webhook_id      bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        bigint NOT NULL,
    kind            text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A daemon sending it holds it until then; after that any daemon may send it again.
    locked_by       text,
    locked_until    timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id, kind)
);

CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_hook_idx ON webhook_deliveries (webhook_id, id DESC);

-- After each statement that appended events: the NOTIFY, then the deliveries of the webhook
-- kinds those events are, each with what a receiver needs to know.
CREATE FUNCTION fleetwave_release_events_inserted() RETURNS trigger
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
        WHERE e.node_id IS NULL AND e.to_status = 'paused'
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
                 'release.failed', 'release.paused', 'batch.finished', 'node.failed'], k.kind),
                 h.id
        ON CONFLICT (webhook_id, event_id, kind) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER release_events_inserted
    AFTER INSERT ON release_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION fleetwave_release_events_inserted();
