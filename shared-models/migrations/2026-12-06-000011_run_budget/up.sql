-- A trigger's budget for the run's model calls (docs/AGENTS.md, "Budgets"):
-- {"maxTokens": ..., "maxCostUsd": ...}, each field overriding the definition's `budget`.
-- NULL: the definition's alone. Expand only: a nullable column the previous release never
-- reads (its statements list the run columns they return).
ALTER TABLE runs ADD COLUMN budget JSONB;
