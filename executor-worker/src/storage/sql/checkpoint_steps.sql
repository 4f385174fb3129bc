-- $1 to $8 the events (text[] run ids, timestamptz[] at, text[] kinds, steps, from and to
-- statuses, levels, messages: runs::with_events), $9 run ids (text[]), $10 names (text[]),
-- $11 positions (int4[]), $12 step types (text[]), $13 statuses (text[]), $14 attempts
-- (int4[]), $15 started at (timestamptz[]), $16 completed at (timestamptz[]), $17 outputs
-- (jsonb[])
WITH steps AS (
    INSERT INTO step_runs (run_id, name, position, step_type, status, attempt,
                           started_at, completed_at, output)
    SELECT * FROM unnest($9::text[], $10::text[], $11::int4[], $12::text[],
                         $13::text[], $14::int4[], $15::timestamptz[],
                         $16::timestamptz[], $17::jsonb[])
    ON CONFLICT (run_id, name) DO UPDATE SET
        status = excluded.status, attempt = excluded.attempt,
        started_at = excluded.started_at, completed_at = excluded.completed_at,
        output = excluded.output, error = NULL, wake_at = NULL
)
INSERT INTO run_events (run_id, at, kind, step, from_status, to_status, level, message)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                     $5::text[], $6::text[], $7::text[], $8::text[])
