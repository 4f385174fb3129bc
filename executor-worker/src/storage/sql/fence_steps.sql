-- $1 now (timestamptz), $2 lease expiry (timestamptz), $3 run ids (text[]), $4 worker id (text)
WITH held AS (
    UPDATE runs SET updated_at = $1, lease_expires_at = $2
    WHERE id = ANY($3) AND lease_owner = $4
    RETURNING id
)
SELECT h.id AS run_id, s.name, s.status, s.attempt
FROM held h
LEFT JOIN LATERAL (
    SELECT name, status, attempt FROM step_runs WHERE run_id = h.id OFFSET 0
) s ON true
