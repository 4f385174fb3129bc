DROP TABLE run_events;
DROP TABLE step_runs;
DROP TABLE outbox;
DROP TABLE runs;
DROP TABLE workflow_versions;
DROP TABLE workflows;
