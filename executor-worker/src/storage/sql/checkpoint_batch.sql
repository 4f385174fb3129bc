-- A checkpoint batch's writes in ONE statement: pure steps (their attempt numbers and events
-- computed by the caller: from PENDING at attempt 1 for a run this job started, from the
-- states the fence read otherwise) and run ends, each run fenced by its lease. Alone it needs
-- no transaction (batch.rs, write_batch).
-- $1 to $8 the events (runs::with_events; steps' events before ends'), $9 now, $10 lease
-- expiry, $11 the runs whose steps are written without their end (text[]), $12 worker id,
-- $13 to $21 the step rows (run ids, names, positions, types, statuses, attempts, started,
-- completed, outputs), $22 to $25 the ends (run ids, statuses, outputs, errors).
WITH held AS (
    UPDATE runs SET updated_at = $9, lease_expires_at = $10
    WHERE id = ANY($11) AND lease_owner = $12
    RETURNING id
), ended AS (
    UPDATE runs AS r SET status = v.status, output = v.output, error = v.error,
           completed_at = $9, updated_at = $9, wake_at = NULL,
           lease_owner = NULL, lease_expires_at = NULL
    FROM unnest($22::text[], $23::text[], $24::jsonb[], $25::text[])
         AS v(id, status, output, error)
    WHERE r.id = ANY($22) AND r.id = v.id AND r.lease_owner = $12
    RETURNING r.id
), live AS (
    SELECT id FROM held UNION ALL SELECT id FROM ended
), steps AS (
    INSERT INTO step_runs (run_id, name, position, step_type, status, attempt,
                           started_at, completed_at, output)
    SELECT s.* FROM unnest($13::text[], $14::text[], $15::int4[], $16::text[],
                           $17::text[], $18::int4[], $19::timestamptz[],
                           $20::timestamptz[], $21::jsonb[])
         AS s(run_id, name, position, step_type, status, attempt, started_at,
              completed_at, output)
    WHERE s.run_id IN (SELECT id FROM live)
    ON CONFLICT (run_id, name) DO UPDATE SET
        status = excluded.status, attempt = excluded.attempt,
        started_at = excluded.started_at, completed_at = excluded.completed_at,
        output = excluded.output, error = NULL, wake_at = NULL
), logged AS (
    INSERT INTO run_events (run_id, at, kind, step, from_status, to_status, level, message)
    SELECT e.run_id, e.at, e.kind, e.step, e.from_status, e.to_status, e.level, e.message
    FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                $5::text[], $6::text[], $7::text[], $8::text[])
         WITH ORDINALITY AS e(run_id, at, kind, step, from_status, to_status, level,
                              message, position)
    WHERE e.run_id IN (SELECT id FROM live)
    ORDER BY e.position
)
SELECT id FROM held UNION ALL SELECT id FROM ended
