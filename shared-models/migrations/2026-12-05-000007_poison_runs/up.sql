-- Poison runs (MAX_LEASE_TAKEOVERS): how many times a run was taken over after its worker
-- stopped renewing its lease (killed, out of memory, wedged). A claim that would take over a
-- run already taken over that many times ends it FAILED instead of running it again.
ALTER TABLE runs ADD COLUMN lease_takeovers integer NOT NULL DEFAULT 0;
