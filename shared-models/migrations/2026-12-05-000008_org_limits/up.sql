-- Per-org quotas (docs/SECURITY.md "Quotas"). Owned by workflow-service (PUT
-- /admin/orgs/{orgId}/limits writes them); every service reads them. NULL is the
-- deployment's default, the setting named in shared_models::limits.
ALTER TABLE orgs
    ADD COLUMN max_queued_runs         INTEGER,
    ADD COLUMN max_running_runs        INTEGER,
    ADD COLUMN max_descendants_per_run INTEGER,
    ADD COLUMN max_workflows           INTEGER,
    ADD COLUMN max_versions_kept       INTEGER,
    ADD COLUMN max_event_streams       INTEGER,
    ADD COLUMN requests_per_second     INTEGER;

-- The root of a run's tree (subworkflow steps make children): NULL for a root run, the
-- root's id for every descendant, so a tree's size is one bounded index scan
-- (maxDescendantsPerRun). Runs made before this migration count as roots.
ALTER TABLE runs ADD COLUMN root_run_id TEXT;
CREATE INDEX runs_by_root ON runs (root_run_id) WHERE root_run_id IS NOT NULL;

-- maxVersionsKept deletes a workflow's old versions that no run uses: this index answers
-- "does a run use this version" (the pruning's NOT EXISTS, and the foreign key's own check
-- on delete) without reading every run of the workflow.
CREATE INDEX runs_by_version ON runs (org_id, workflow_id, workflow_version);

-- maxQueuedRuns counts an org's PENDING and WAITING runs with a bounded scan of
-- runs_by_status (org_id, status, id DESC): no other index is needed.

-- Sent outbox rows are pruned once OUTBOX_RETENTION_SECONDS old (runtime-service's
-- scheduler, in bounded batches) oldest id first, through the primary key: no index on
-- sent_at, which every publish would have to update.
