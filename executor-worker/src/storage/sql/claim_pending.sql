-- $1 run ids (text[]), $2 their org ids (text[]), $3 now (timestamptz), $4 worker id (text),
-- $5 lease expiry (timestamptz), $6 start log line (text), $7 default running cap (int8,
-- 0 = none), $8 'PENDING' (text)
WITH batch AS (
    SELECT b.id, b.org_id, b.position
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(id, org_id, position)
), pending AS (
    SELECT r.id, r.org_id,
           row_number() OVER (PARTITION BY r.org_id ORDER BY b.position) AS place
    FROM batch b
    CROSS JOIN LATERAL (
        SELECT id, org_id FROM runs
        WHERE id = b.id AND org_id = b.org_id AND status = $8
        OFFSET 0
    ) r
), caps AS (
    SELECT o.org_id,
           COALESCE((SELECT g.max_running_runs FROM orgs g WHERE g.id = o.org_id), $7) AS cap
    FROM (SELECT DISTINCT org_id FROM pending) o
), slots AS (
    SELECT c.org_id, c.cap - thygon_lock_and_count_running(c.org_id) AS free
    FROM (SELECT org_id, cap FROM caps WHERE cap > 0 ORDER BY org_id) c
), admitted AS (
    SELECT p.id FROM pending p
    WHERE p.place <= COALESCE((SELECT s.free FROM slots s WHERE s.org_id = p.org_id),
                              p.place)
), claimed AS (
    UPDATE runs SET status = 'RUNNING', started_at = COALESCE(started_at, $3),
           updated_at = $3, wake_at = NULL, lease_owner = $4, lease_expires_at = $5
    WHERE id IN (SELECT id FROM admitted) AND status = $8
    RETURNING id, org_id, workflow_id, workflow_version, status, variables, output, error,
              created_at, updated_at, started_at, completed_at, lease_owner, lease_expires_at,
              idempotency_key, request_hash, request_id, parent_run_id, parent_step, wake_at,
              root_run_id, budget
), logged AS (
    INSERT INTO run_events (run_id, at, kind, from_status, to_status, level, message)
    SELECT c.id, $3, e.kind, e.from_status, e.to_status, e.level, e.message
    FROM claimed c,
         (VALUES (1, 'transition', 'PENDING', 'RUNNING', NULL, NULL),
                 (2, 'log', NULL, NULL, 'INFO', $6))
         AS e(position, kind, from_status, to_status, level, message)
    ORDER BY c.id, e.position
)
SELECT * FROM claimed
