DROP INDEX runs_by_version;
DROP INDEX runs_by_root;
ALTER TABLE runs DROP COLUMN root_run_id;
ALTER TABLE orgs
    DROP COLUMN max_queued_runs,
    DROP COLUMN max_running_runs,
    DROP COLUMN max_descendants_per_run,
    DROP COLUMN max_workflows,
    DROP COLUMN max_versions_kept,
    DROP COLUMN max_event_streams,
    DROP COLUMN requests_per_second;
