-- $1 root run id (text), $2 the most to count (int8)
SELECT count(*) AS n FROM (
    SELECT 1 FROM runs WHERE root_run_id = $1 LIMIT $2
) q
