-- The lease reaper (runtime-service) looks for RUNNING runs whose lease expired, every
-- scheduler pass, across all orgs: keep that a small index scan.
CREATE INDEX runs_expired_leases ON runs (lease_expires_at) WHERE status = 'RUNNING';
