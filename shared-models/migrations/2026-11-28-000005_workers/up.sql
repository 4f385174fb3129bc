-- Worker presence, for the operators' views (GET /ops/workers). Owned by executor-worker:
-- each worker upserts its own row when it starts and every WORKER_HEARTBEAT_SECONDS, and
-- deletes it on a clean shutdown. A worker that died leaves its row behind; runtime-service
-- shows it as not live once its heartbeat is older than three intervals, and for an hour.
CREATE TABLE workers (
    id                 TEXT PRIMARY KEY,
    hostname           TEXT NOT NULL,
    pid                INT4 NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL,
    last_heartbeat_at  TIMESTAMPTZ NOT NULL,
    -- WORKER_CONCURRENCY: jobs executed at once.
    concurrency        INT4 NOT NULL,
    -- Runs being executed at the last heartbeat.
    in_flight          INT4 NOT NULL
);

CREATE INDEX workers_by_heartbeat ON workers (last_heartbeat_at DESC);

-- The age of the oldest PENDING run (GET /ops/queues samples it every few seconds) stays a
-- short index scan however many runs there are.
CREATE INDEX runs_pending_by_age ON runs (created_at) WHERE status = 'PENDING';
