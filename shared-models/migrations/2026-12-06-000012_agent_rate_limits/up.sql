-- Agents' rate limits (`rateLimit` in the agents file), shared by every worker
-- (docs/AGENTS.md, "Rate limits"). Owned by executor-worker. Expand only: new tables.

-- One row per rate-limited agent: the lock that makes admissions one at a time.
CREATE TABLE agent_rate_limits (
    agent_id TEXT PRIMARY KEY
);

-- The calls admitted in the current window (older ones are deleted as admissions pass):
-- when each was admitted, and the tokens it used once it answered.
CREATE TABLE agent_calls (
    id       BIGSERIAL   PRIMARY KEY,
    agent_id TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    tokens   BIGINT      NOT NULL DEFAULT 0
);
CREATE INDEX agent_calls_agent_at ON agent_calls (agent_id, at);
