-- Owners (ARCHITECTURE.md "One owner per table"):
--   workflows, workflow_versions: workflow-service
--   runs (creation), outbox:      runtime-service
--   step_runs, run_events, run status after creation: executor-worker

CREATE TABLE workflows (
    org_id      TEXT        NOT NULL,
    id          TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    description TEXT,
    is_active   BOOLEAN     NOT NULL DEFAULT TRUE,
    -- the current version; versions continue across delete and re-create
    version     INTEGER     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    -- a deleted workflow keeps its row so old runs still point at their version
    deleted_at  TIMESTAMPTZ,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX workflows_newest_first ON workflows (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE workflow_versions (
    org_id      TEXT        NOT NULL,
    workflow_id TEXT        NOT NULL,
    version     INTEGER     NOT NULL,
    definition  JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, workflow_id, version),
    FOREIGN KEY (org_id, workflow_id) REFERENCES workflows (org_id, id)
);

CREATE TABLE runs (
    id               TEXT        PRIMARY KEY,
    org_id           TEXT        NOT NULL,
    workflow_id      TEXT        NOT NULL,
    workflow_version INTEGER     NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('PENDING','RUNNING','WAITING','COMPLETED','FAILED','CANCELLED')),
    variables        JSONB       NOT NULL,
    output           JSONB,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    completed_at     TIMESTAMPTZ,
    -- the worker that holds the run, and until when; another worker may take it over after
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    -- Idempotency-Key of the trigger that created it, with a hash of that request's body
    idempotency_key  TEXT,
    request_hash     TEXT,
    -- carried from the HTTP request into the job and every worker log line of the run
    request_id       TEXT,
    FOREIGN KEY (org_id, workflow_id, workflow_version) REFERENCES workflow_versions (org_id, workflow_id, version)
);
CREATE INDEX runs_newest_first ON runs (org_id, id DESC);
CREATE INDEX runs_by_workflow ON runs (org_id, workflow_id, id DESC);
CREATE INDEX runs_by_status ON runs (org_id, status, id DESC);
CREATE UNIQUE INDEX runs_idempotency_key ON runs (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- A job to publish, written in the same transaction as its run; the relay publishes what
-- the request path could not.
CREATE TABLE outbox (
    id            BIGSERIAL   PRIMARY KEY,
    run_id        TEXT        NOT NULL REFERENCES runs (id),
    payload       JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- a relay that took the row to publish it; others leave it alone until then
    claimed_until TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    sent_at       TIMESTAMPTZ
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE TABLE step_runs (
    run_id       TEXT        NOT NULL REFERENCES runs (id),
    name         TEXT        NOT NULL,
    -- the step's index in the definition, for display order
    position     INTEGER     NOT NULL,
    step_type    TEXT        NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('PENDING','RUNNING','WAITING','COMPLETED','FAILED','SKIPPED','CANCELLED')),
    attempt      INTEGER     NOT NULL DEFAULT 0,
    started_at   TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    output       JSONB,
    error        TEXT,
    PRIMARY KEY (run_id, name)
);

-- Transitions and log lines of a run in one ordered stream (ids order them for SSE later).
CREATE TABLE run_events (
    id          BIGSERIAL   PRIMARY KEY,
    run_id      TEXT        NOT NULL REFERENCES runs (id),
    at          TIMESTAMPTZ NOT NULL,
    kind        TEXT        NOT NULL CHECK (kind IN ('transition','log')),
    step        TEXT,
    from_status TEXT,
    to_status   TEXT,
    level       TEXT,
    message     TEXT
);
CREATE INDEX run_events_by_run ON run_events (run_id, id);
