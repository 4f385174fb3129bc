DROP FUNCTION thygon_lock_and_count_running(TEXT);
