DROP INDEX outbox_dedupe_key;
ALTER TABLE outbox DROP COLUMN dedupe_key;
ALTER TABLE step_runs DROP COLUMN child_run_id;
ALTER TABLE step_runs DROP COLUMN wake_at;
DROP INDEX runs_to_wake;
ALTER TABLE runs DROP COLUMN wake_at;
ALTER TABLE runs DROP COLUMN parent_step;
ALTER TABLE runs DROP COLUMN parent_run_id;
