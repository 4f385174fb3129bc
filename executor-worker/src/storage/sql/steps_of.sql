-- $1 run ids (text[])
SELECT s.run_id, s.name, s.position, s.step_type, s.status, s.attempt, s.started_at,
       s.completed_at, s.output, s.error, s.wake_at, s.child_run_id
FROM unnest($1::text[]) AS b(id)
CROSS JOIN LATERAL (SELECT * FROM step_runs WHERE run_id = b.id OFFSET 0) s
