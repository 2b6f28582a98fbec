-- fleetwave schema, version 1.
--
-- The tables and statuses of the original system (release_tasks, release_task_nodes, nodes)
-- plus what the executor needs: leases and fencing, batch plans, tolerances, the audit trail
-- and API tokens. Every added column has a default, so a release inserted by another program
-- with the original columns only is picked up and executed.

CREATE TABLE nodes (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    main_ip      text NOT NULL,
    agent_port   integer NOT NULL DEFAULT 8443 CHECK (agent_port BETWEEN 1 AND 65535),
    enabled      boolean NOT NULL DEFAULT true,
    status       text NOT NULL DEFAULT 'online'
                 CHECK (status IN ('online', 'offline', 'maintenance')),
    last_seen_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE release_tasks (
    id               bigserial PRIMARY KEY,
    type             text NOT NULL DEFAULT 'apply_config',
    target           text NOT NULL DEFAULT 'cdn',
    version          bigint NOT NULL UNIQUE,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'paused', 'success', 'failed',
                                       'cancelled')),
    total_nodes      integer NOT NULL DEFAULT 0,
    success_nodes    integer NOT NULL DEFAULT 0,
    failed_nodes     integer NOT NULL DEFAULT 0,
    -- NULL: the scope is the target. At most one release per scope is active.
    scope            text,
    -- NULL: the default plan [1, "100%"].
    plan             jsonb CHECK (plan IS NULL OR jsonb_typeof(plan) = 'array'),
    max_parallel     integer CHECK (max_parallel IS NULL OR max_parallel >= 1),
    max_failures     integer NOT NULL DEFAULT 0 CHECK (max_failures >= 0),
    reason           text NOT NULL DEFAULT '',
    error            text,
    lease_owner      text,
    lease_epoch      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX release_tasks_status_idx ON release_tasks (status);
-- The claim query: pending releases by scope in version order, active releases by scope.
CREATE INDEX release_tasks_scope_pending_idx
    ON release_tasks ((coalesce(scope, target)), version) WHERE status = 'pending';
CREATE INDEX release_tasks_scope_active_idx
    ON release_tasks ((coalesce(scope, target))) WHERE status IN ('running', 'paused');
CREATE INDEX release_tasks_lease_idx
    ON release_tasks (lease_expires_at) WHERE status = 'running';

CREATE TABLE release_task_nodes (
    id              bigserial PRIMARY KEY,
    release_task_id bigint NOT NULL REFERENCES release_tasks (id) ON DELETE CASCADE,
    node_id         bigint NOT NULL REFERENCES nodes (id),
    batch           integer NOT NULL CHECK (batch >= 1),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'success', 'failed', 'cancelled',
                                      'skipped')),
    error_msg       varchar(255),
    task_id         text,
    attempts        integer NOT NULL DEFAULT 0,
    started_at      timestamptz,
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (release_task_id, node_id)
);

-- The unique constraint above also serves lookups by release_task_id.
CREATE INDEX release_task_nodes_release_batch_idx
    ON release_task_nodes (release_task_id, batch, id);
CREATE INDEX release_task_nodes_node_id_idx ON release_task_nodes (node_id);
CREATE INDEX release_task_nodes_batch_idx ON release_task_nodes (batch);
CREATE INDEX release_task_nodes_status_idx ON release_task_nodes (status);

-- Append-only audit trail: one row per transition of a release or of one of its nodes.
CREATE TABLE release_events (
    id              bigserial PRIMARY KEY,
    release_task_id bigint NOT NULL REFERENCES release_tasks (id) ON DELETE CASCADE,
    node_id         bigint,
    batch           integer,
    from_status     text,
    to_status       text NOT NULL,
    message         text,
    daemon_id       text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX release_events_release_idx ON release_events (release_task_id, id);

CREATE TABLE api_tokens (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
