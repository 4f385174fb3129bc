-- Stranded runs (docs/RELIABILITY.md "Stranded runs"). Expand only: a nullable column and a
-- new table, which the previous release neither reads nor minds.

-- When a job for a PENDING run was last queued by the PENDING sweeper (runtime-service), or
-- published late by the outbox relay (after the broker was away). With `updated_at` (the
-- run's creation, retry or last hold) it is the sweeper's clock: a PENDING run whose clock
-- is older than PENDING_REQUEUE_SECONDS, with no job waiting in the outbox, has no job in
-- flight, and is queued again. NULL until either happens.
ALTER TABLE runs ADD COLUMN queued_at TIMESTAMPTZ;

-- Counts every replica adds to, for the operators' view (GET /ops/queues): runs the sweeper
-- queued again, dead letters redriven. Owned by runtime-service.
CREATE TABLE ops_counters (
    name       TEXT        PRIMARY KEY,
    value      BIGINT      NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
