DROP INDEX runs_due_wakeups;
DROP TABLE api_keys;
DROP TABLE orgs;
