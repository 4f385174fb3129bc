DROP TABLE ops_counters;
ALTER TABLE runs DROP COLUMN queued_at;
