-- The per-org running cap (MAX_RUNNING_PER_ORG) in one call: take the org's transaction-scoped
-- lock, then count its RUNNING runs. VOLATILE, so the count is read with a snapshot taken
-- after the lock is granted (a plain statement's snapshot is taken before it runs): every
-- claim that counted before this one has committed by then, so two claims cannot both take an
-- org's last slot. Usable inside the claim's own UPDATE, which keeps the lock until commit.
CREATE FUNCTION thygon_lock_and_count_running(org TEXT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    running BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('thygon-running:' || org, 0));
    SELECT count(*) INTO running FROM runs WHERE org_id = org AND status = 'RUNNING';
    RETURN running;
END
$$;
