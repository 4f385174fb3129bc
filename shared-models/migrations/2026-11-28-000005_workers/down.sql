DROP INDEX runs_pending_by_age;
DROP TABLE workers;
