-- $1 run id (text), $2 now (timestamptz), $3 worker id (text), $4 lease expiry (timestamptz)
UPDATE runs SET status = 'RUNNING', started_at = COALESCE(started_at, $2),
       updated_at = $2, wake_at = NULL, lease_owner = $3, lease_expires_at = $4
WHERE id = $1
RETURNING id, org_id, workflow_id, workflow_version, status, variables, output, error,
          created_at, updated_at, started_at, completed_at, lease_owner, lease_expires_at,
          idempotency_key, request_hash, request_id, parent_run_id, parent_step, wake_at,
          root_run_id, budget
