-- $1 org id (text), $2 default running cap (int8, 0 = none)
SELECT c.cap,
       CASE WHEN c.cap > 0 THEN thygon_lock_and_count_running($1) ELSE 0 END AS running
FROM (SELECT COALESCE((SELECT max_running_runs FROM orgs WHERE id = $1)::int8, $2) AS cap) c
