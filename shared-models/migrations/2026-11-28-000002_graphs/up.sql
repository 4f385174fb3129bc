-- Workflow graphs: waiting steps (delay, approval, subworkflow) and the wake-ups that
-- resume their runs without holding a worker.

-- A child run (subworkflow step) knows its parent, to wake it when it ends.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT REFERENCES runs (id);
ALTER TABLE runs ADD COLUMN parent_step TEXT;
-- A WAITING run is woken (a job is queued for it) at this time: its earliest delay end or
-- wait timeout. Written by the worker; read by the scheduler in runtime-service.
ALTER TABLE runs ADD COLUMN wake_at TIMESTAMPTZ;
CREATE INDEX runs_to_wake ON runs (wake_at) WHERE status = 'WAITING' AND wake_at IS NOT NULL;

-- A WAITING step: when its delay ends or its wait times out, and the child run it waits for.
ALTER TABLE step_runs ADD COLUMN wake_at TIMESTAMPTZ;
ALTER TABLE step_runs ADD COLUMN child_run_id TEXT REFERENCES runs (id);

-- One job per wake-up, however many scheduler passes or replicas see it.
ALTER TABLE outbox ADD COLUMN dedupe_key TEXT;
CREATE UNIQUE INDEX outbox_dedupe_key ON outbox (dedupe_key) WHERE dedupe_key IS NOT NULL;
