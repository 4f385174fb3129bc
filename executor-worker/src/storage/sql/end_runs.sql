-- $1 to $8 the events (text[] run ids, timestamptz[] at, text[] kinds, steps, from and to
-- statuses, levels, messages: runs::with_events), $9 now (timestamptz), $10 run ids
-- (text[]), $11 statuses (text[]), $12 outputs (jsonb[]), $13 errors (text[]), $14 worker
-- id (text)
WITH ended AS (
    UPDATE runs AS r SET status = v.status, output = v.output, error = v.error,
           completed_at = $9, updated_at = $9, wake_at = NULL,
           lease_owner = NULL, lease_expires_at = NULL
    FROM unnest($10::text[], $11::text[], $12::jsonb[], $13::text[])
         AS v(id, status, output, error)
    WHERE r.id = ANY($10) AND r.id = v.id AND r.lease_owner = $14
    RETURNING r.id
)
INSERT INTO run_events (run_id, at, kind, step, from_status, to_status, level, message)
SELECT e.run_id, e.at, e.kind, e.step, e.from_status, e.to_status, e.level, e.message
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
            $5::text[], $6::text[], $7::text[], $8::text[])
     WITH ORDINALITY AS e(run_id, at, kind, step, from_status, to_status, level,
                          message, position)
WHERE e.run_id IN (SELECT id FROM ended)
ORDER BY e.position
RETURNING run_id AS id
