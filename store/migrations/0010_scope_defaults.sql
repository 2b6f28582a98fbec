-- Default strategies of scopes: what a release created without strategy fields of its own
-- runs (store/scopes.py). A release's scope, for its default, is the scope it names, else its
-- target; the default is copied into the release's strategy column when it is created, so a
-- change here never changes a release already made.
--
-- Every column but the key has a default: a row written by another program with the scope
-- alone means the original's behaviour (a canary, then the rest, stop at the first failure).

CREATE TABLE scope_strategies (
    scope       text PRIMARY KEY CHECK (btrim(scope) <> '' AND length(scope) <= 255),
    -- The strategy as validated (store/strategy.py Strategy.to_json): {"plan": [...],
    -- "maxFailures": N, "maxFailurePercent": P, "onFailure": "stop", "healthChecks": [...]}.
    strategy    jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The API token that set it last (name and role); NULL: set by another program.
    set_by      text,
    set_by_role text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
