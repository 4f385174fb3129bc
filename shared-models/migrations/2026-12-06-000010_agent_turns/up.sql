-- Agent steps as real agents (docs/AGENTS.md). Expand only: two new tables, which the
-- previous release neither reads nor minds. Both are owned by executor-worker (written under
-- the run's lease); runtime-service reads them for run detail, lists and GET /usage.

-- The journal of an agent step's conversation: one row per model turn, across the step's
-- attempts. A turn is written once its model call answered; its tool calls' results are
-- added to it one by one as they finish. After a worker crash the step's next attempt reads
-- these rows and goes on after the last one: no turn is asked twice, no finished tool call
-- runs twice.
CREATE TABLE agent_turns (
    run_id        TEXT        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step          TEXT        NOT NULL,
    turn          INT         NOT NULL,
    attempt       INT         NOT NULL,
    -- Denormalised from the run, for GET /usage (by org and time, no join with runs).
    org_id        TEXT        NOT NULL,
    workflow_id   TEXT        NOT NULL,
    agent_id      TEXT        NOT NULL,
    model         TEXT        NOT NULL,
    -- The messages this turn added before its model call (the first turn: system and user;
    -- a repair turn: the validation errors), then the model's reply, then the results of
    -- the reply's tool calls by call id.
    messages      JSONB       NOT NULL,
    reply         JSONB       NOT NULL,
    tool_results  JSONB       NOT NULL DEFAULT '{}'::jsonb,
    input_tokens  BIGINT      NOT NULL,
    output_tokens BIGINT      NOT NULL,
    cached_tokens BIGINT      NOT NULL,
    -- In pico-USD (1e-12), from the agent entry's prices when the turn was answered.
    cost_picos    BIGINT      NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, step, turn)
);
CREATE INDEX agent_turns_org_time ON agent_turns (org_id, created_at);

-- A run's usage, the sum of its turns, kept with each turn (in the same transaction) so
-- that lists show it without summing turns.
CREATE TABLE run_usage (
    run_id        TEXT   PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_picos    BIGINT NOT NULL
);
