-- Live pieces of agents' answers as they are written (docs/AGENTS.md, "Streaming"), for the
-- run's event stream (`agent.delta`, `agent.reset`). Not durable on purpose: UNLOGGED (no
-- WAL; emptied if PostgreSQL crashes), pruned after minutes; only a step's final answer is
-- kept (in `step_runs` and `agent_turns`). Written by executor-worker, read by
-- runtime-service. Expand only: a new table.
CREATE UNLOGGED TABLE agent_deltas (
    id      BIGSERIAL   PRIMARY KEY,
    run_id  TEXT        NOT NULL,
    step    TEXT        NOT NULL,
    attempt INT         NOT NULL,
    kind    TEXT        NOT NULL,
    data    JSONB       NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX agent_deltas_run ON agent_deltas (run_id, id);
CREATE INDEX agent_deltas_at ON agent_deltas (at);
